"""A `GenRequest`'s sampling fields and constraint as the runtime's `SamplingParams`, and the
mask that keeps the end of the output back until `min_tokens`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sgl_lang.protocol import (
    BackendError,
    Choices,
    Constraint,
    GenRequest,
    Grammar,
    JsonSchema,
    Regex,
)

if TYPE_CHECKING:
    import torch

    from sgl_lang.runtime.sampling import LogitsMask, SamplingParams


def sampling_params(
    request: GenRequest, logits_mask: LogitsMask | None = None, heal_prefix: str = ""
) -> SamplingParams:
    """The runtime's SamplingParams for a request; invalid values are backend errors. With
    `heal_prefix` (the text token healing backed up) the constraint is prefixed with it, and
    the token that regenerates it does not count against `max_tokens`."""
    from sgl_lang.runtime.sampling import SamplingParams

    try:
        return SamplingParams(
            max_new_tokens=request.max_tokens + (1 if heal_prefix else 0),
            **knob_fields(request),
            stop=tuple(stop for stop in request.stop if stop),
            stop_regex=request.stop_regex,
            include_stop=request.include_stop,
            return_logprobs=request.logprobs is not None,
            top_logprobs_num=request.logprobs or 0,
            logits_mask=logits_mask,
            **constraint_fields(request.constraint, heal_prefix),
        )
    except ValueError as exc:
        raise BackendError(f"local model: {exc}") from None


KNOBS = (
    "temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "seed",
    "ignore_eos",
)  # fmt: skip


def knob_fields(request: GenRequest) -> dict[str, Any]:
    """The request's sampling knobs (`KNOBS`), named as both our runtime's and vLLM's
    `SamplingParams` name them."""
    return {name: getattr(request, name) for name in KNOBS}


def constraint_fields(constraint: Constraint | None, prefix: str = "") -> dict[str, Any]:
    """The SamplingParams fields that make the runtime enforce `constraint` token by token
    (after `prefix`, which the output re-produces first)."""
    from sgl_lang.runtime.constrained import ConstraintSpec

    if isinstance(constraint, Regex):
        spec = ConstraintSpec.regex(constraint.pattern)
    elif isinstance(constraint, JsonSchema):
        spec = ConstraintSpec.json(constraint.schema)
    elif isinstance(constraint, Choices):
        spec = ConstraintSpec.choices(constraint.options)
    elif isinstance(constraint, Grammar):
        spec = ConstraintSpec.grammar(constraint.source)
    else:
        return {}
    return {"constraint": spec.with_prefix(prefix)}


def min_tokens_mask(
    inner: LogitsMask | None, num_tokens: int, end_ids: Sequence[int], vocab_size: int
) -> LogitsMask:
    """`inner` (or no mask), with the tokens that end the output (`end_ids`: EOS, stop
    tokens) forbidden for the first `num_tokens` steps."""
    import torch

    blocked = torch.tensor(sorted(set(end_ids)), dtype=torch.long)
    everything = torch.ones(vocab_size, dtype=torch.bool)

    def mask(output_ids: Sequence[int]) -> torch.Tensor | None:
        allowed = inner(output_ids) if inner is not None else None
        if len(output_ids) >= num_tokens:
            return allowed
        allowed = (everything if allowed is None else allowed).clone()
        allowed[blocked] = False
        return allowed

    return mask
