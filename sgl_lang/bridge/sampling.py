"""A `GenRequest`'s sampling fields and constraint as the runtime's `SamplingParams`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sgl_lang.protocol import BackendError, Choices, Constraint, GenRequest, JsonSchema, Regex

if TYPE_CHECKING:
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
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            frequency_penalty=request.frequency_penalty,
            presence_penalty=request.presence_penalty,
            seed=request.seed,
            stop=tuple(stop for stop in request.stop if stop),
            ignore_eos=request.ignore_eos,
            logits_mask=logits_mask,
            **constraint_fields(request.constraint, heal_prefix),
        )
    except ValueError as exc:
        raise BackendError(f"local model: {exc}") from None


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
    else:
        return {}
    return {"constraint": spec.with_prefix(prefix)}
