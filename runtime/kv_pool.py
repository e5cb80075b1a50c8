"""KV tensors: one row per slot (one token of one request), handed out in pages (pages.py),
stored in the layout of the kernel set (kernels/).

A slot is an index into every layer's K and V storage. Page 0 (slots 0..page_size-1) is a
padding sink that is never handed out, so a batch may point padding tokens at slot 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgl_lang.runtime.kernels import Kernels
from sgl_lang.runtime.kernels.torch_kernels import TorchKernels
from sgl_lang.runtime.pages import PageAllocator


class KVPool:
    """Per-layer K and V storage for slots 0..num_slots in pages of `page_size` slots, in the
    layout of its kernel set (`kernels`, torch's by default), plus the slot allocator.

    Slot s lies in page s // page_size at offset s % page_size; pages are allocated whole, so
    storage covers `num_pages * page_size` slots. Only the kernels address slots inside it
    (`write`, `read`, `copy_slots`).
    """

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        *,
        kernels: Kernels | None = None,
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
        self.kernels = kernels = kernels or TorchKernels()
        kernels.check_page_size(page_size)
        self.allocator = PageAllocator(num_slots // page_size, page_size)
        self.num_layers = num_layers
        self.num_slots = self.allocator.num_slots
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.page_size = page_size
        self.num_pages = self.allocator.num_pages + 1  # the sink page included
        layers = [
            kernels.allocate_kv(
                self.num_pages, page_size, num_kv_heads, head_dim, dtype, self.device
            )
            for _ in range(num_layers)
        ]
        self.k = [k for k, _ in layers]
        self.v = [v for _, v in layers]

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store K/V `[len(slots), num_kv_heads, head_dim]` of layer `layer` at `slots`."""
        self.kernels.write_kv(self.k[layer], self.v[layer], slots, k, v)

    def read(self, layer: int, slots: Tensor) -> tuple[Tensor, Tensor]:
        """The K and V of layer `layer` at `slots`, each `[len(slots), num_kv_heads, head_dim]`."""
        return self.kernels.read_kv(self.k[layer], self.v[layer], slots)

    def copy_slots(self, src: Tensor, dst: Tensor) -> None:
        """Copy the K/V of slots `src` to slots `dst` (int64, same length) in every layer."""
        if src.shape != dst.shape:
            raise ValueError(f"copy_slots: {src.numel()} source slots for {dst.numel()} targets")
        for layer in range(self.num_layers):
            self.write(layer, dst, *self.read(layer, src))

    @property
    def bytes_per_slot(self) -> int:
        return _bytes_per_slot(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)

    @property
    def num_bytes(self) -> int:
        """Memory held by all K/V tensors, the sink page included."""
        return self.bytes_per_slot * self.num_pages * self.page_size

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
