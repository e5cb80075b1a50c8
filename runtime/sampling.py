"""Sampling: SamplingParams (what a request asks for) and Sampler (logits -> next tokens).

Order of operations per row: frequency/presence penalties on the output so far, the request's
`logits_mask` and `logits_processor` (constrained decoding), then greedy argmax (temperature 0)
or temperature, top-k, top-p and min-p truncation and a draw (a seeded request from its own
generator, so it draws the same tokens whatever batch it runs in). The batch is sampled in
whole-batch tensor calls; only those hooks and seeded draws are per row. The reported
log-probability is the model's own (log-softmax of the raw logits), so it does not depend on
the sampling knobs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sgl_lang.runtime.constrained import ConstraintSpec

# Constrained decoding hook: given the output token ids so far, a bool mask [vocab] of the tokens
# allowed next (True = allowed), or None for no constraint at this step.
LogitsMask = Callable[[Sequence[int]], Tensor | None]
# A general hook after the mask: (logits [vocab] of one row, output ids so far) -> new logits.
LogitsProcessor = Callable[[Tensor, Sequence[int]], Tensor]


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates. `temperature=0` is greedy; `top_k=0`, `top_p=1` and
        `min_p=0` switch those filters off. `stop` strings (and the first match of `stop_regex` in the
    decoded text) end the output and are not part of it unless `include_stop`;
        `stop_token_ids` and the model's EOS ids (unless `ignore_eos`) end it too. `constraint` (a
        regex, JSON schema or choices; see constrained.py) masks every step (through the
        engine's `logits_processor`) and ends the output when the grammar is complete; it excludes
        `ignore_eos` and a hand-made `logits_processor`."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_regex: str | None = None  # ends the output at its first match in the decoded text
    include_stop: bool = False  # the stop string (or regex match) stays in the output
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    return_logprobs: bool = False
    top_logprobs_num: int = 0  # the k most likely tokens of each step go into the meta
    logits_mask: LogitsMask | None = None
    logits_processor: LogitsProcessor | None = None
    constraint: ConstraintSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens!r}"
            )
        if not self.temperature >= 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0, got {self.top_k!r}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(
                    f"SamplingParams.{name} must be in [-2, 2], got {getattr(self, name)}"
                )
        if not isinstance(self.top_logprobs_num, int) or not 0 <= self.top_logprobs_num <= 20:
            raise ValueError(
                f"SamplingParams.top_logprobs_num must be an int in [0, 20], "
                f"got {self.top_logprobs_num!r}"
            )
        if any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop: stop strings must not be empty")
        if self.stop_regex is not None:
            _check_stop_regex(self.stop_regex)
        if self.constraint is not None:
            if not isinstance(self.constraint, ConstraintSpec):
                raise ValueError(
                    f"SamplingParams.constraint must be a ConstraintSpec, got {self.constraint!r}"
                )
            if self.ignore_eos or self.logits_processor is not None:
                raise ValueError(
                    "SamplingParams.constraint cannot be combined with ignore_eos or "
                    "logits_processor"
                )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _check_stop_regex(pattern: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"SamplingParams.stop_regex is not a valid regex: {exc}") from None
    if compiled.fullmatch(""):
        raise ValueError("SamplingParams.stop_regex must not match the empty string")


TopLogprobs = tuple[tuple[int, float], ...]
"""The k most likely tokens of one step, as (token id, log-prob), most likely first."""


class SampleResult(NamedTuple):
    token_ids: Tensor  # [B] int64 (0 in a failed row)
    logprobs: Tensor  # [B] fp32, log p(token) under the model
    errors: tuple[Exception | None, ...] = ()  # per row: why it failed (its request's fault)
    top_logprobs: tuple[TopLogprobs, ...] = ()  # per row: its `top_logprobs_num` best tokens


class Sampler:
    """Picks one token per row of a logits batch, each row with its own request's params.

    The whole batch is sampled in a few tensor calls: greedy rows take one `max` (its index is
    argmax's, the first largest, at a third of argmax's time here), the others one softmax with
    their temperatures and one sort for their truncation filters. Per row remain only what a
    row owns: its penalties, mask and processor (rows without them skip the loop) and the draw
    of a seeded row from its own generator."""

    def sample(
        self,
        logits: Tensor,
        params: Sequence[SamplingParams],
        output_ids: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None],
        *,
        row_errors: bool = False,
    ) -> SampleResult:
        """One token per row. A row whose penalties, mask or processor raise raises here, or with
        `row_errors` is reported in `SampleResult.errors` while the other rows are sampled as if
        it were not there (the engine: one request's constraint fails that request alone)."""
        logits = logits.float()
        model_logprobs = torch.log_softmax(logits, dim=-1)
        errors: list[Exception | None] = [None] * len(params)
        logits = _apply_row_hooks(logits, params, output_ids, errors, row_errors)
        token_ids = torch.zeros(len(params), dtype=torch.int64)
        live = [row for row, error in enumerate(errors) if error is None]
        greedy_rows = [row for row in live if params[row].is_greedy]
        if len(greedy_rows) == len(params):  # no copy of the rows
            token_ids = logits.max(dim=-1).indices
        elif greedy_rows:
            token_ids[greedy_rows] = logits[greedy_rows].max(dim=-1).indices
        random_rows = [row for row in live if not params[row].is_greedy]
        if random_rows:
            weights = sampling_weights(logits[random_rows], [params[r] for r in random_rows])
            token_ids[random_rows] = _draw(weights, [generators[r] for r in random_rows])
        logprobs = model_logprobs.gather(1, token_ids[:, None])[:, 0]
        return SampleResult(
            token_ids, logprobs, tuple(errors), top_logprobs(model_logprobs, params)
        )


def _apply_row_hooks(
    logits: Tensor,
    params: Sequence[SamplingParams],
    output_ids: Sequence[Sequence[int]],
    errors: list[Exception | None],
    row_errors: bool,
) -> Tensor:
    """`logits` after each row's penalties, mask and processor; a row that raises is noted in
    `errors` (or raises, without `row_errors`)."""
    hooked_rows = [row for row, p in enumerate(params) if _has_row_hooks(p, output_ids[row])]
    if not hooked_rows:
        return logits
    logits = logits.clone()
    for row in hooked_rows:
        try:  # a row's mask or processor (its constraint) fails that row alone
            logits[row] = _row_hooks(logits[row], params[row], output_ids[row])
        except Exception as exc:
            if not row_errors:
                raise
            errors[row] = exc
    return logits


def _has_row_hooks(p: SamplingParams, output_ids: Sequence[int]) -> bool:
    penalised = bool(p.frequency_penalty or p.presence_penalty) and bool(output_ids)
    return penalised or p.logits_mask is not None or p.logits_processor is not None


def _row_hooks(logits: Tensor, p: SamplingParams, output_ids: Sequence[int]) -> Tensor:
    if (p.frequency_penalty or p.presence_penalty) and output_ids:
        logits = apply_penalties(logits, output_ids, p.frequency_penalty, p.presence_penalty)
    if p.logits_mask is not None and (allowed := p.logits_mask(output_ids)) is not None:
        if not bool(allowed.any()):
            raise ValueError("logits_mask allowed no token")
        logits = logits.masked_fill(~allowed, float("-inf"))
    if p.logits_processor is not None:
        logits = p.logits_processor(logits, output_ids)
    return logits


def _draw(weights: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """One token per row of `weights` [B, V] by inverse transform sampling: the first token
    whose cumulative weight exceeds u times the row's total, for a uniform u per row — the
    unseeded rows' from torch's global generator in one call, each seeded row's from its own
    (so its draw does not depend on the batch). One cumsum for the whole batch: torch's
    `multinomial` takes ~20 ms a row at a 49k vocabulary on this CPU (docs/benchmarks.md)."""
    cdf = weights.double().cumsum(dim=-1)
    uniform = torch.empty(weights.shape[0], 1, dtype=torch.float64)
    unseeded = [row for row, gen in enumerate(generators) if gen is None]
    if unseeded:
        uniform[unseeded] = torch.rand(len(unseeded), 1, dtype=torch.float64)
    for row, gen in enumerate(generators):
        if gen is not None:
            uniform[row] = torch.rand(1, dtype=torch.float64, generator=gen)
    token_ids = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)[:, 0]
    # u * total can round up to the total itself: that row takes its most likely token
    overflow = token_ids >= weights.shape[1]
    return torch.where(overflow, weights.argmax(dim=-1), token_ids)


def top_logprobs(
    model_logprobs: Tensor, params: Sequence[SamplingParams]
) -> tuple[TopLogprobs, ...]:
    """Per row, the `top_logprobs_num` most likely tokens under the model (before filters)."""
    k = max((p.top_logprobs_num for p in params), default=0)
    if not k:
        return tuple(() for _ in params)
    values, ids = model_logprobs.topk(k, dim=-1)
    return tuple(
        tuple(
            zip(
                ids[row, : p.top_logprobs_num].tolist(),
                values[row, : p.top_logprobs_num].tolist(),
                strict=True,
            )
        )
        for row, p in enumerate(params)
    )


def apply_penalties(
    logits: Tensor, output_ids: Sequence[int], frequency: float, presence: float
) -> Tensor:
    """OpenAI's penalties: subtract `frequency` per earlier occurrence, `presence` once."""
    counts = torch.bincount(torch.tensor(output_ids), minlength=logits.shape[-1])[
        : logits.shape[-1]
    ]
    return logits - frequency * counts - presence * (counts > 0)


def sampling_weights(logits: Tensor, params: Sequence[SamplingParams]) -> Tensor:
    """Per row of `logits` [B, V], the softmax at the row's temperature restricted to its
    top-k tokens, the smallest set whose mass reaches its top-p, and the tokens with at least
    min_p times the top probability; not renormalised (`_draw` takes weights).
    Every step works on whole rows, so a row's weights do not depend on the other rows."""
    temperatures = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
    probs = torch.softmax(logits / temperatures[:, None], dim=-1)
    if all(not p.top_k and p.top_p >= 1 and p.min_p <= 0 for p in params):
        return probs  # no filter: skip the sort (~4 ms a row at 49k)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    vocab_size = logits.shape[-1]
    top_k = torch.tensor([p.top_k or vocab_size for p in params])
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype)
    min_p = torch.tensor([p.min_p for p in params], dtype=logits.dtype)
    keep = torch.arange(vocab_size)[None, :] < top_k[:, None]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep &= (mass_before < top_p[:, None]) | (top_p[:, None] >= 1)  # the crossing token stays
    keep &= sorted_probs >= min_p[:, None] * sorted_probs[:, :1]
    keep[:, 0] = True
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs * keep)
