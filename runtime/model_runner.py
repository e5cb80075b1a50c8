"""One forward step: a ForwardBatch of new tokens -> logits, over the paged KV pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sgl_lang.runtime.kv_pool import KVPool
    from sgl_lang.runtime.models.llama import LlamaModel


@dataclass
class ForwardBatch:
    """The new tokens of several requests, concatenated in request order.

    `out_slots[t]` is the KV slot that token t's K/V is written to before attention;
    `seq_slots[r]` lists the slots of request r's whole context *including* its new tokens, in
    order (so its last `extend_lens[r]` entries equal its part of `out_slots`). New tokens attend
    causally to their own request's context only. Logits are computed only at `logits_indices`
    (indices into the new tokens).
    """

    input_ids: Tensor  # [T] int64
    positions: Tensor  # [T] int64
    out_slots: Tensor  # [T] int64
    seq_slots: list[Tensor]  # per request, [context_len] int64
    extend_lens: list[int]  # per request, new tokens
    logits_indices: Tensor  # [num_logits] int64

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)

    def validate(self) -> None:
        """Raise ValueError naming the field when the parts of the batch disagree."""
        num_tokens = self.num_tokens
        for name in ("positions", "out_slots"):
            if getattr(self, name).shape != (num_tokens,):
                raise ValueError(f"ForwardBatch.{name} must have shape [{num_tokens}]")
        if len(self.seq_slots) != len(self.extend_lens):
            raise ValueError("ForwardBatch.seq_slots must have one entry per request")
        if sum(self.extend_lens) != num_tokens:
            raise ValueError(f"ForwardBatch.extend_lens must sum to {num_tokens}")
        for slots, num_new in zip(self.seq_slots, self.extend_lens, strict=True):
            if not 0 < num_new <= len(slots):
                raise ValueError("ForwardBatch.extend_lens: each must be in 1..len(seq_slots[r])")
        if self.logits_indices.numel() and not (
            int(self.logits_indices.min()) >= 0 and int(self.logits_indices.max()) < num_tokens
        ):
            raise ValueError(f"ForwardBatch.logits_indices must lie in [0, {num_tokens})")


class ModelRunner:
    """Runs a model over a KV pool on the pool's kernel set (the model's weights are prepared
    for it once, here): `run(batch)` writes the batch's K/V and returns its logits."""

    def __init__(self, model: LlamaModel, kv_pool: KVPool) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.device = next(model.parameters()).device
        with torch.inference_mode():
            self.prepared = model.prepare(kv_pool.kernels)

    def run(self, batch: ForwardBatch) -> Tensor:
        """fp32 logits `[len(batch.logits_indices), vocab]`, on the CPU."""
        batch.validate()
        with torch.inference_mode():
            if self.device.type != "cpu":
                batch = _to_device(batch, self.device)
            return self.model(batch, self.kv_pool, self.prepared).cpu()


def _to_device(batch: ForwardBatch, device: torch.device) -> ForwardBatch:
    return ForwardBatch(
        input_ids=batch.input_ids.to(device),
        positions=batch.positions.to(device),
        out_slots=batch.out_slots.to(device),
        seq_slots=[s.to(device) for s in batch.seq_slots],
        extend_lens=batch.extend_lens,
        logits_indices=batch.logits_indices.to(device),
    )
