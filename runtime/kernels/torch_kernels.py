"""The portable kernels: plain torch ops, the reference the others are checked against."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from sgl_lang.runtime.kernels.base import Kernels, PreparedLinear
from sgl_lang.runtime.kernels.sdpa import SdpaPlan, plan_sdpa, sdpa_attention

if TYPE_CHECKING:
    from sgl_lang.runtime.model_runner import ForwardBatch


class TorchLinear:
    """A weight used as it is (no copy)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: Tensor) -> Tensor:
        """`F.linear`. On CPU, 2..256 rows run as (W @ x^T)^T: measured 1.1-4x faster there
        (oneDNN picks a poor kernel for a short x against a tall W, e.g. the lm_head in decode)."""
        if x.is_cpu and 2 <= x.shape[0] <= 256:
            out = torch.mm(self.weight, x.t()).t().contiguous()
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def read_slots(k_cache: Tensor, v_cache: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    # index_select on the flat slots is several times faster than 2-D fancy indexing
    return k_cache.index_select(0, slots), v_cache.index_select(0, slots)


class TorchKernels(Kernels):
    """KV per layer as `[num_pages * page_size, num_kv_heads, head_dim]` (one row per slot, any
    page size); attention by SDPA over gathered slots."""

    name = "torch"
    page_size_multiple = 1

    def allocate_kv(
        self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        shape = (num_pages * page_size, num_kv_heads, head_dim)
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in "kv")  # type: ignore[return-value]

    def write_kv(
        self, k_cache: Tensor, v_cache: Tensor, slots: Tensor, k: Tensor, v: Tensor
    ) -> None:
        k_cache.index_copy_(0, slots, k.to(k_cache.dtype))
        v_cache.index_copy_(0, slots, v.to(v_cache.dtype))

    def read_kv(self, k_cache: Tensor, v_cache: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        return read_slots(k_cache, v_cache, slots)

    def plan_attention(self, batch: ForwardBatch, page_size: int, num_heads: int,
                       k_cache: Tensor) -> SdpaPlan:  # fmt: skip
        return plan_sdpa(batch)

    def attention(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: object) -> Tensor:
        assert isinstance(plan, SdpaPlan)
        return sdpa_attention(q, k_cache, v_cache, plan, read_slots)

    def prepare_linear(self, weight: Tensor, bias: Tensor | None = None) -> PreparedLinear:
        return TorchLinear(weight, bias)

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        if x.dtype == torch.float32:  # the fused kernel; bit-identical to the steps below in fp32
            return F.rms_norm(x, weight.shape, weight, eps)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def add_rms_norm(
        self, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        residual = x + residual
        return self.rms_norm(residual, weight, eps), residual

    def rotary(
        self, positions: Tensor, q: Tensor, k: Tensor, head_dim: int, cos_sin_cache: Tensor
    ) -> tuple[Tensor, Tensor]:
        cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
        cos, sin = torch.cat((cos, cos), dim=-1)[:, None], torch.cat((sin, sin), dim=-1)[:, None]
        num_tokens = positions.shape[0]
        q3, k3 = q.view(num_tokens, -1, head_dim), k.view(num_tokens, -1, head_dim)
        q3 = q3 * cos + _rotate_half(q3) * sin
        k3 = k3 * cos + _rotate_half(k3) * sin
        return q3.view(num_tokens, -1), k3.view(num_tokens, -1)
