"""KV tensors: one row per slot (one token of one request), handed out in pages (pages.py).

A slot is an index into every layer's K and V tensors. Page 0 (slots 0..page_size-1) is a
padding sink that is never handed out, so a batch may point padding tokens at slot 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgl_lang.runtime.pages import PageAllocator


class KVPool:
    """Per-layer K and V tensors `[(num_pages + 1) * page_size, num_kv_heads, head_dim]` plus
    their page allocator; `num_slots` is rounded down to whole pages."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        page_size: int = 1,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("num_slots", num_slots),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("page_size", page_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_slots < page_size:
            raise ValueError(f"num_slots ({num_slots}) must hold one page of {page_size} slots")
        self.allocator = PageAllocator(num_slots // page_size, page_size)
        self.num_layers = num_layers
        self.num_slots = self.allocator.num_slots
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (self.num_slots + page_size, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store K/V `[len(slots), num_kv_heads, head_dim]` of layer `layer` at `slots`."""
        self.k[layer].index_copy_(0, slots, k.to(self.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.dtype))

    def copy_slots(self, src: Tensor, dst: Tensor) -> None:
        """Copy the K/V of slots `src` to slots `dst` in every layer (a cached partial page)."""
        for layer_kv in (*self.k, *self.v):
            layer_kv[dst] = layer_kv[src]

    @property
    def bytes_per_slot(self) -> int:
        return _bytes_per_slot(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)

    @property
    def num_bytes(self) -> int:
        """Memory held by all K/V tensors, sink rows included."""
        return self.bytes_per_slot * (self.num_slots + self.allocator.page_size)

    @staticmethod
    def num_slots_for_budget(
        budget_bytes: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> int:
        """Usable slots that fit in `budget_bytes` (the sink row is counted in the budget)."""
        num_slots = budget_bytes // _bytes_per_slot(num_layers, num_kv_heads, head_dim, dtype) - 1
        if num_slots < 1:
            raise ValueError(f"budget_bytes={budget_bytes} is too small for one KV slot")
        return int(num_slots)


def _bytes_per_slot(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * element_size
