"""KV tensors and slot allocation: one token of one request is one slot ("page size 1").

A slot is an index into every layer's K and V tensors. Row 0 of each tensor is a padding
sink that is never handed out, so a batch may point padding tokens at slot 0 and write there
without touching anyone's cache. Usable slots are 1..num_slots.

The free list is a FIFO queue of slot indices: `alloc` takes from the front, `free` appends to
the back. A fresh (or cleared) allocator holds 1..num_slots in ascending order, so allocation
order is deterministic and tests can assert exact slot numbers. A slot is at any moment either
in the free list or owned by someone else (the radix tree or a request); the allocator checks
its own half of that (no double free, no out-of-range slot), the radix cache's
`check_integrity` checks the whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgl_lang.runtime.kernels import Kernels
from sgl_lang.runtime.kernels.torch_kernels import TorchKernels


class DoubleFreeError(RuntimeError):
    """A slot was freed while it was already free (an ownership bug in the caller)."""


class SlotAllocator:
    """Hands out KV slot indices 1..num_slots from a FIFO free list (slot 0 is the sink)."""

    def __init__(self, num_slots: int) -> None:
        if not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be a positive int, got {num_slots!r}")
        self.num_slots = num_slots
        self.clear()

    def clear(self) -> None:
        """Make every usable slot free again, in ascending order."""
        self._free_slots = torch.arange(1, self.num_slots + 1, dtype=torch.int64)
        self._is_free = torch.ones(self.num_slots + 1, dtype=torch.bool)
        self._is_free[0] = False  # the sink is never free, so freeing it is caught too

    @property
    def num_free(self) -> int:
        return int(self._free_slots.numel())

    @property
    def num_used(self) -> int:
        return self.num_slots - self.num_free

    @property
    def free_slots(self) -> Tensor:
        """The free list in allocation order (a read-only view; do not modify)."""
        return self._free_slots

    def alloc(self, num: int) -> Tensor | None:
        """Take `num` slots from the front of the free list; None if fewer are free."""
        if num < 0:
            raise ValueError(f"num must be >= 0, got {num}")
        if num > self.num_free:
            return None
        slots = self._free_slots[:num].clone()
        self._free_slots = self._free_slots[num:]
        self._is_free[slots] = False
        return slots

    def free(self, slots: Tensor) -> None:
        """Return `slots` to the back of the free list, in the given order.

        Raises ValueError for a malformed tensor or a slot outside 1..num_slots, and
        DoubleFreeError if a slot is already free or appears twice; nothing is freed then.
        """
        if slots.dtype != torch.int64 or slots.dim() != 1:
            raise ValueError(f"slots must be a 1-D int64 tensor, got {slots.dtype} {slots.dim()}-D")
        if slots.numel() == 0:
            return
        slots = slots.to("cpu")
        lo, hi = int(slots.min()), int(slots.max())
        if lo < 1 or hi > self.num_slots:
            raise ValueError(f"slots must lie in [1, {self.num_slots}], got [{lo}, {hi}]")
        already_free = slots[self._is_free[slots]]
        if already_free.numel():
            raise DoubleFreeError(f"slot {int(already_free[0])} is already free")
        if torch.unique(slots).numel() != slots.numel():
            raise DoubleFreeError("slots to free contain duplicates")
        self._is_free[slots] = True
        self._free_slots = torch.cat((self._free_slots, slots))


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
        self.kernels = kernels = kernels or TorchKernels()
        kernels.check_page_size(page_size)
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.page_size = page_size
        self.num_pages = -(-(num_slots + 1) // page_size)  # the sink slot 0 included
        layers = [
            kernels.allocate_kv(
                self.num_pages, page_size, num_kv_heads, head_dim, dtype, self.device
            )
            for _ in range(num_layers)
        ]
        self.k = [k for k, _ in layers]
        self.v = [v for _, v in layers]
        self.allocator = SlotAllocator(num_slots)

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
        """Memory held by all K/V tensors, the sink and the unused end of the last page included."""
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
