"""The generation calls of `gen` and `select`, with constraints enforced or checked and retried.

A constraint the backend enforces goes with the request. One it cannot enforce is left out: the
output is checked instead (`outputs.output_value`), and an output that fails is generated again
— a retry, with the next seed — up to `num_retries` times; then the last failure is raised as
a `constraint error`. An output cut at `max_tokens` before it complies is never retried. Every
call is recorded, for `--trace`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sgl_lang.errors import SglBackendError, SglConstraintError
from sgl_lang.gen_args import GenArgs
from sgl_lang.outputs import output_value
from sgl_lang.protocol import CONSTRAINT_KIND, Backend, BackendError, GenRequest, GenResult
from sgl_lang.source import Span
from sgl_lang.values import to_repr

DEFAULT_NUM_RETRIES = 2


@dataclass(frozen=True)
class CallRecord:
    """One backend call, for `--trace`. `attempt` counts from 1 (2 and on are retries);
    `rejected` says why the output failed its check (None: it passed, or was not checked)."""

    kind: str
    name: str
    span: Span
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    attempt: int = 1
    rejected: str | None = None


class Site(NamedTuple):
    """The `gen` or `select` (`kind`) a call is made for."""

    kind: str
    name: str
    span: Span


@contextmanager
def backend_errors() -> Iterator[None]:
    """Turn a backend's `BackendError` into the language's `SglBackendError` (the interpreter
    then gives it the location of the statement that made the call)."""
    try:
        yield
    except BackendError as exc:
        raise SglBackendError(str(exc)) from None


def constraint_label(args: GenArgs) -> str:
    """How a `gen`'s constraint is named to the user: its argument (`type`, `regex`, ...)."""
    return "type" if args.type_name else CONSTRAINT_KIND[type(args.request.constraint)]


async def generate_checked(
    backend: Backend,
    args: GenArgs,
    site: Site,
    *,
    calls: list[CallRecord],
    num_retries: int,
    on_chunk: Callable[[str], None] | None,
) -> tuple[GenResult, Any]:
    """Generate `args.request` on `backend`; returns the result and the value it binds. Output
    checked after the fact streams to `on_chunk` only once it has passed."""
    enforced = backend.capabilities.enforces(args.request.constraint)
    num_attempts = 1 if enforced else 1 + num_retries
    attempt = 1
    while True:
        request = args.request if enforced else _unconstrained(args.request, attempt)
        with backend_errors():
            result = await backend.generate(request, on_chunk if enforced else None)
        cut = result.finish_reason == "length"  # then checked in full, even if enforced
        value, error = _checked_value(result.text, args, enforced and not cut)
        if error and cut:
            error = _cut_error(result, args.request)
        calls.append(_record(site, result, attempt, error))
        if error is None:
            if not enforced and on_chunk is not None and result.text:
                on_chunk(result.text)
            return result, value
        if enforced or cut:
            raise error
        if attempt == num_attempts:
            raise _exhausted(error, num_attempts, backend, args)
        attempt += 1


def _unconstrained(request: GenRequest, attempt: int) -> GenRequest:
    """The request without its constraint; a retry takes the next seed, so that a seeded
    sampler draws anew."""
    seed = request.seed if attempt == 1 else (request.seed or 0) + attempt - 1
    return replace(request, constraint=None, seed=seed)


def _cut_error(result: GenResult, request: GenRequest) -> SglConstraintError:
    return SglConstraintError(
        f"the output was cut at max_tokens={request.max_tokens} before it satisfied "
        f"the constraint: {to_repr(result.text)}",
        hint="raise `max_tokens` for this `gen`",
    )


def _checked_value(
    text: str, args: GenArgs, enforced: bool
) -> tuple[Any, SglConstraintError | None]:
    try:
        return output_value(text, args, enforced=enforced), None
    except SglConstraintError as error:
        return None, error


def _record(
    site: Site, result: GenResult, attempt: int, error: SglConstraintError | None
) -> CallRecord:
    return CallRecord(
        site.kind,
        site.name,
        site.span,
        result.prompt_tokens,
        result.completion_tokens,
        result.cached_tokens,
        attempt,
        error.message if error else None,
    )


def _exhausted(
    error: SglConstraintError, num_attempts: int, backend: Backend, args: GenArgs
) -> SglConstraintError:
    attempts = f"{num_attempts} attempt" + ("s" if num_attempts > 1 else "")
    return SglConstraintError(
        f"{error.message} (after {attempts}; backend `{backend.name}` does not enforce "
        f"`{constraint_label(args)}`)",
        hint="more retries (`sgl run --retries N`) or a `temperature` above 0 may help",
    )
