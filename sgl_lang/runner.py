"""What `sgl run` and `sgl check` do: load, check, pick a backend, interpret, report."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from sgl_lang import nodes
from sgl_lang.backends import get_backend
from sgl_lang.backends.base import Backend
from sgl_lang.errors import SglError, SglNameError, SglValueError, SglWarning
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader
from sgl_lang.state import State
from sgl_lang.stdlib import builtins, permissions
from sgl_lang.values import to_repr

DEFAULT_BACKEND = "local"


@dataclass(frozen=True)
class RunOptions:
    """How `sgl run` was asked to run."""

    backend_uri: str | None = None
    permissions: permissions.Permissions = field(default_factory=permissions.Permissions)
    stream: bool = False
    trace: bool = False
    max_tokens: int | None = None


def backend_uri_of(program: nodes.Program, override: str | None) -> str:
    """The CLI's `--backend`, else the program's `backend "URI"`, else the default."""
    if override:
        return override
    for stmt in program.body:
        if isinstance(stmt, nodes.BackendDecl):
            return stmt.uri
    return DEFAULT_BACKEND


def _declared_params(program: nodes.Program) -> list[str]:
    return [stmt.name for stmt in program.body if isinstance(stmt, nodes.ParamDecl)]


def _errors_only(problems: list[SglError]) -> list[SglError]:
    return [p for p in problems if not isinstance(p, SglWarning)]


def _report(problems: Sequence[SglError]) -> None:
    for problem in problems:
        print(problem.render(), file=sys.stderr)


def check_files(paths: Sequence[Path], backend_uri: str | None = None) -> list[SglError]:
    """All problems (errors and warnings) of the given files, for `sgl check`."""
    loader = Loader()
    problems: list[SglError] = []
    for path in paths:
        try:
            program = loader.load(path)
        except SglError as error:
            problems.append(error)
            continue
        capabilities = get_backend(backend_uri).capabilities if backend_uri else None
        problems.extend(loader.check(program, None, capabilities))
    return problems


async def run_file(path: Path, params: dict[str, Any], options: RunOptions) -> int:
    """Run one program; prints errors, returns the exit code."""
    loader = Loader()
    program = loader.load(path)
    unknown = sorted(set(params) - set(_declared_params(program)))
    if unknown:
        declared = ", ".join(_declared_params(program)) or "none"
        raise SglNameError(f"unknown param `{unknown[0]}` (the program declares: {declared})")
    errors = _errors_only(loader.check(program, params))
    if errors:
        _report(errors)
        return 1
    backend = get_backend(backend_uri_of(program, options.backend_uri))
    try:
        interpreter = _interpreter(backend, loader, params, options)
        await _run_traced(interpreter, program, options)
    finally:
        await backend.close()
    return 0


def _interpreter(
    backend: Backend, loader: Loader, params: dict[str, Any], options: RunOptions
) -> Interpreter:
    return Interpreter(
        backend,
        params=params,
        default_max_tokens=options.max_tokens or 256,
        on_chunk=_stream_chunk if options.stream else None,
        on_warning=lambda message: print(f"warning: {message}", file=sys.stderr),
        load_program=loader.load_import,
    )


def _stream_chunk(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


async def _run_traced(
    interpreter: Interpreter, program: nodes.Program, options: RunOptions
) -> State:
    token = permissions.current.set(options.permissions)
    try:
        return await interpreter.run_program(program)
    finally:
        permissions.current.reset(token)
        if options.stream:
            sys.stderr.write("\n")
        if options.trace:
            print_trace(interpreter, Console(stderr=True))


def print_trace(interpreter: Interpreter, console: Console) -> None:
    """Each state's final prompt (generated text highlighted), then every backend call."""
    for number, state in enumerate(interpreter.states):
        console.rule(f"state {number}")
        text = Text()
        role: str | None = None
        for piece in state.pieces:
            if piece.role != role and piece.role:
                text.append(f"\n[{piece.role}] ", style="bold cyan")
            role = piece.role
            text.append(
                "<image>" if piece.image is not None else piece.text,
                style="bold green" if piece.generated else "",
            )
        console.print(text)
    table = Table("call", "name", "where", "prompt tokens", "completion tokens", "cached tokens")
    for call in interpreter.calls:
        table.add_row(
            call.kind,
            call.name,
            call.span.location,
            str(call.prompt_tokens),
            str(call.completion_tokens),
            str(call.cached_tokens),
        )
    console.print(table)


async def run_batch_file(
    path: Path, batch: Path, out: Path, params: dict[str, Any], parallel: int, options: RunOptions
) -> int:
    """Run a program once per JSONL row; failing rows are written with their error."""
    loader = Loader()
    program = loader.load(path)
    errors = _errors_only(loader.check(program))
    if errors:
        _report(errors)
        return 1
    rows = _read_rows(batch)
    backend = get_backend(backend_uri_of(program, options.backend_uri))
    limit = asyncio.Semaphore(parallel)
    quiet = RunOptions(options.backend_uri, options.permissions, False, False, options.max_tokens)
    results: list[dict[str, Any]] = [{}] * len(rows)
    try:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("running", total=len(rows))

            async def one(index: int, row: dict[str, Any]) -> None:
                async with limit:
                    results[index] = await _run_row(
                        program, loader, backend, {**params, **row}, quiet
                    )
                    results[index] = {"index": index, "input": row, **results[index]}
                progress.advance(task)

            await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
    finally:
        await backend.close()
    with out.open("w", encoding="utf-8") as file:
        for result in results:
            file.write(json.dumps(result, ensure_ascii=False) + "\n")
    num_failed = sum(result["error"] is not None for result in results)
    print(f"{len(rows) - num_failed} of {len(rows)} rows ok; results in {out}", file=sys.stderr)
    return 1 if num_failed else 0


async def _run_row(
    program: nodes.Program,
    loader: Loader,
    backend: Backend,
    row: dict[str, Any],
    options: RunOptions,
) -> dict[str, Any]:
    printed = io.StringIO()
    token = builtins.output.set(printed)
    params = {name: row[name] for name in _declared_params(program) if name in row}
    try:
        errors = _errors_only(loader.check(program, params))
        if errors:
            raise errors[0]
        interpreter = _interpreter(backend, loader, params, options)
        state = await _run_traced(interpreter, program, options)
        return {"output": _jsonable(state.variables), "printed": printed.getvalue(), "error": None}
    except SglError as error:
        return {"output": None, "printed": printed.getvalue(), "error": error.render()}
    finally:
        builtins.output.reset(token)


def _read_rows(batch: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(batch.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SglValueError(f"{batch}:{number}: not a JSON line: {exc}") from None
        if not isinstance(row, dict):
            raise SglValueError(f"{batch}:{number}: each line must be a JSON object of params")
        rows.append(row)
    return rows


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for name, value in values.items():
        try:
            json.dumps(value)
            result[name] = value
        except (TypeError, ValueError):
            result[name] = to_repr(value)
    return result
