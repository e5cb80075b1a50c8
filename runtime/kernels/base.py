"""The kernel interface: what a forward pass asks of its compute kernels and KV storage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sgl_lang.runtime.model_runner import ForwardBatch


class KernelsUnavailableError(RuntimeError):
    """A kernel set cannot run here (its library is missing, or the device/page size/shape is
    one it does not support); the message says why."""


class PreparedLinear(Protocol):
    """A linear layer's weight made ready once at load (e.g. prepacked for one matmul library):
    calling it maps `x [T, in_features]` to `[T, out_features]`. Quantized weights are one more
    kind of prepared weight."""

    def __call__(self, x: Tensor) -> Tensor: ...


class Kernels(ABC):
    """The ops of a Llama-family forward and the layout of the KV pool they read.

    KV storage: `allocate_kv` gives one layer's K and V tensors for `num_pages` pages of
    `page_size` slots (slot s lies in page s // page_size at offset s % page_size); only
    `write_kv`/`read_kv` may address slots in them, since the layout inside a page is the
    kernel set's own. Attention reads the pool in place: `plan_attention` derives per-forward
    metadata from a `ForwardBatch` once, `attention` uses it in every layer.
    Ops may work in place on their inputs where the docstring says so; always use the result.
    """

    name: ClassVar[str]
    page_size_multiple: ClassVar[int]  # page sizes this kernel set accepts are multiples of it

    @classmethod
    def check_page_size(cls, page_size: int) -> None:
        """Raise ValueError when pages of `page_size` slots do not suit these kernels."""
        if page_size < 1 or page_size % cls.page_size_multiple:
            raise ValueError(
                f"page size {page_size}: the {cls.name} kernels need a multiple of "
                f"{cls.page_size_multiple}"
            )

    @abstractmethod
    def allocate_kv(
        self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """One layer's zeroed (K, V) storage."""

    @abstractmethod
    def write_kv(
        self, k_cache: Tensor, v_cache: Tensor, slots: Tensor, k: Tensor, v: Tensor
    ) -> None:
        """Store `k`, `v` `[len(slots), num_kv_heads, head_dim]` at `slots` (int64)."""

    @abstractmethod
    def read_kv(self, k_cache: Tensor, v_cache: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """The K and V stored at `slots`, each `[len(slots), num_kv_heads, head_dim]`."""

    @abstractmethod
    def plan_attention(self, batch: ForwardBatch, page_size: int, num_heads: int,
                       k_cache: Tensor) -> object:  # fmt: skip
        """Per-forward attention metadata for `batch` (`k_cache`: any layer's K, for its shape
        and dtype)."""

    @abstractmethod
    def attention(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: object) -> Tensor:
        """Causal attention of the new tokens `q [T, H, D]` over their requests' contexts in
        the pool (their own K/V already written) -> `[T, H * D]`."""

    @abstractmethod
    def prepare_linear(self, weight: Tensor, bias: Tensor | None = None) -> PreparedLinear:
        """`weight [out, in]` (and `bias [out]`) made ready for `linear`."""

    def linear(self, x: Tensor, weight: PreparedLinear) -> Tensor:
        """`x @ weight.T (+ bias)` for a prepared weight."""
        return weight(x)

    @abstractmethod
    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """RMSNorm of `x [T, hidden]` scaled by `weight`."""

    @abstractmethod
    def add_rms_norm(
        self, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        """(rms_norm(x + residual), x + residual); may overwrite `x` and `residual`."""

    @abstractmethod
    def rotary(
        self, positions: Tensor, q: Tensor, k: Tensor, head_dim: int, cos_sin_cache: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Neox-style rotary embedding of `q [T, H * D]`, `k [T, KV * D]` (2-D, possibly strided
        views) at `positions` int64; may work in place."""

    def silu_and_mul(self, x: Tensor) -> Tensor:
        """`silu(gate) * up` for `x = [gate | up]` `[T, 2d]` -> `[T, d]`: torch's vectorised silu
        into the output, then one in-place multiply (3x faster per row on this CPU than vLLM's
        `silu_and_mul` and than `F.silu(gate) * up`; docs/kernels.md)."""
        gate, up = x.chunk(2, dim=-1)
        out = torch.ops.aten.silu.out(gate, out=torch.empty_like(up))
        return out.mul_(up)


def cos_sin_cache(inv_freq: Tensor, num_positions: int, dtype: torch.dtype) -> Tensor:
    """`[num_positions, head_dim]` = cat(cos(t * inv_freq), sin(t * inv_freq)), computed in fp32
    as transformers does, then cast to `dtype`."""
    freqs = torch.arange(num_positions, dtype=torch.float32)[:, None] * inv_freq.float().cpu()
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype=dtype, device=inv_freq.device)
