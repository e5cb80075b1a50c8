"""Attention with torch's SDPA over K/V gathered from the pool slot by slot (any layout)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from sgl_lang.runtime.model_runner import ForwardBatch

ReadKV = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]  # (k_cache, v_cache, slots)


class SdpaPlan(NamedTuple):
    """Per-forward attention metadata, shared by all layers.

    Decode batches (one new token per request) use one padded SDPA call: `gather_slots` [B, L_max]
    (padding = slot 0, the sink) and `key_mask` [B, 1, 1, L_max] (None when all lengths agree).
    Other batches attend per request: `requests` holds (first token, num tokens, slots, mask);
    mask is None for a single token or a prefill without prefix (SDPA's `is_causal` square).
    """

    gather_slots: Tensor | None
    key_mask: Tensor | None
    requests: list[tuple[int, int, Tensor, Tensor | None]]


def plan_sdpa(batch: ForwardBatch) -> SdpaPlan:
    """Build the gather indices and causal masks for `batch` once per forward."""
    seq_slots, extend_lens = batch.seq_slots, batch.extend_lens
    if len(seq_slots) > 1 and all(n == 1 for n in extend_lens):
        gather = nn.utils.rnn.pad_sequence(list(seq_slots), batch_first=True, padding_value=0)
        seq_lens = torch.tensor([len(s) for s in seq_slots], device=gather.device)
        mask = None
        if int(seq_lens.min()) != gather.shape[1]:
            mask = torch.arange(gather.shape[1], device=gather.device) < seq_lens[:, None]
            mask = mask[:, None, None, :]
        return SdpaPlan(gather, mask, [])
    requests, start = [], 0
    for slots, num_new in zip(seq_slots, extend_lens, strict=True):
        ctx_len, mask = len(slots), None
        if 1 < num_new < ctx_len:  # bottom-right aligned: new token j sees keys[: prefix + j + 1]
            key_pos = torch.arange(ctx_len, device=slots.device)
            query_pos = torch.arange(ctx_len - num_new, ctx_len, device=slots.device)
            mask = key_pos[None, :] <= query_pos[:, None]
        requests.append((start, num_new, slots, mask))
        start += num_new
    return SdpaPlan(None, None, requests)


def sdpa_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: SdpaPlan, read_kv: ReadKV
) -> Tensor:
    """q [T, H, D] -> attention output [T, H * D], reading K/V through `read_kv`."""
    num_tokens = q.shape[0]
    if plan.gather_slots is not None:
        k, v = read_kv(k_cache, v_cache, plan.gather_slots.view(-1))
        shape = (*plan.gather_slots.shape, *k.shape[1:])
        k, v = k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)  # [B, KV, L, D]
        out = F.scaled_dot_product_attention(
            q[:, :, None, :], k, v, attn_mask=plan.key_mask, enable_gqa=True
        )
        return out.reshape(num_tokens, -1)
    outs = []
    for start, num_new, slots, mask in plan.requests:
        q_i = q[start : start + num_new].transpose(0, 1)[None]  # [1, H, n, D]
        k, v = read_kv(k_cache, v_cache, slots)
        k, v = k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # [1, KV, L, D]
        is_causal = mask is None and num_new > 1  # no prefix: the plain causal square
        o = F.scaled_dot_product_attention(
            q_i, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True
        )
        outs.append(o[0].transpose(0, 1).reshape(num_new, -1))
    return outs[0] if len(outs) == 1 else torch.cat(outs)
