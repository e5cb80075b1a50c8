"""Scheduled batches: the token layout of a step, and where its logits go.

A batch carries a chunk of new tokens per request: decode rows first (the output tokens of a
decoding request that are not in its KV yet: the last one, plus any a constraint forced before
it: jump-forward), then prompt chunks. Logits are computed only where they are needed: at the
last token of a request that samples next, and at every position whose next token is a scored
prompt token (`logprob_start_len`). A batch is DECODE, EXTEND or MIXED by the rows it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

from sgl_lang.runtime.model_runner import ForwardBatch
from sgl_lang.runtime.request import Request, RequestKind, RequestStatus
from sgl_lang.runtime.sampling import top_logprobs


class BatchKind(Enum):
    EXTEND = "extend"  # prompt chunks only
    DECODE = "decode"  # decode rows only
    MIXED = "mixed"  # both


class ExtendChunk(NamedTuple):
    """The next `num_tokens` tokens of `request`'s prompt, to extend in one step."""

    request: Request
    num_tokens: int


class SampleRow(NamedTuple):
    """The logits row `row` that `request` samples its next token from."""

    request: Request
    row: int


@dataclass
class ScheduledBatch:
    """A forward batch plus, per request, where its logits are: `num_logprob_rows[i]` prompt
    log-prob rows starting at `first_rows[i]`, then one sampling row if `samples[i]`. The first
    `num_decode_rows` requests decode, the others extend their prompt."""

    kind: BatchKind
    num_decode_rows: int
    requests: list[Request]
    forward: ForwardBatch
    first_rows: list[int]
    num_logprob_rows: list[int]
    samples: list[bool]

    @property
    def sample_rows(self) -> list[SampleRow]:
        """The requests that sample a token from this batch's logits, in batch order."""
        return [
            SampleRow(req, first + num_logprob_rows)
            for req, first, num_logprob_rows, samples in zip(
                self.requests, self.first_rows, self.num_logprob_rows, self.samples, strict=True
            )
            if samples
        ]

    def split(self) -> list[ScheduledBatch]:
        """One batch per request, laid out as in this one (its slots are allocated already,
        their KV not computed yet): to run the requests of a failed forward alone."""
        pairs = zip(self.requests, self.forward.extend_lens, strict=True)
        return [extend_batch([ExtendChunk(req, num)]) for req, num in pairs]


def extend_batch(chunks: list[ExtendChunk]) -> ScheduledBatch:
    """Each request extends its last `num` slots (already allocated, not yet computed); the
    chunks of decoding requests come first."""
    input_ids: list[int] = []
    positions, out_slots = [], []
    logit_positions: list[int] = []
    first_rows, num_logprob_rows, samples = [], [], []
    num_tokens = 0
    for req, num in chunks:
        end = req.kv_len
        start = end - num
        input_ids += req.fill_ids[start:end]
        positions.append(torch.arange(start, end))
        out_slots.append(req.slots[start:end])
        first_rows.append(len(logit_positions))
        if req.logprob_start_len is not None:  # logits at p give the log-prob of token p+1
            lo, hi = max(start, req.logprob_start_len - 1), min(end, req.fill_len - 1)
            logit_positions += [num_tokens + p - start for p in range(lo, hi)]
        num_logprob_rows.append(len(logit_positions) - first_rows[-1])
        samples.append(req.kind is RequestKind.GENERATE and end == req.fill_len)
        if samples[-1]:
            logit_positions.append(num_tokens + num - 1)
        num_tokens += num
    forward = ForwardBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.cat(positions),
        out_slots=torch.cat(out_slots),
        seq_slots=[req.slots for req, _ in chunks],
        extend_lens=[num for _, num in chunks],
        logits_indices=torch.tensor(logit_positions, dtype=torch.int64),
    )
    requests = [req for req, _ in chunks]
    num_decode_rows = sum(req.status is RequestStatus.DECODING for req in requests)
    kind = BatchKind.MIXED if 0 < num_decode_rows < len(requests) else BatchKind.EXTEND
    if num_decode_rows == len(requests):
        kind = BatchKind.DECODE
    return ScheduledBatch(
        kind, num_decode_rows, requests, forward, first_rows, num_logprob_rows, samples
    )


def record_prompt_logprobs(req: Request, num_new: int, logits: Tensor) -> None:
    """Append to `req` the log-probs of the scored prompt tokens whose logits rows (`logits`)
    this chunk computed and, with `top_logprobs_num`, each position's most likely tokens."""
    first = max(req.kv_len - num_new, req.logprob_start_len - 1) + 1  # type: ignore[operator]
    targets = torch.tensor(req.fill_ids[first : first + len(logits)])
    model_logprobs = torch.log_softmax(logits.float(), dim=-1)
    req.prompt_logprobs += model_logprobs.gather(1, targets[:, None])[:, 0].tolist()
    if req.params.top_logprobs_num:
        req.prompt_top_logprobs += top_logprobs(model_logprobs, [req.params] * len(logits))
