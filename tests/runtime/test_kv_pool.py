"""SlotAllocator hands out exact slots in FIFO order and catches ownership bugs; KVPool sizes."""

from __future__ import annotations

import pytest
import torch

from sgl_lang.runtime.kv_pool import KVPool
from sgl_lang.runtime.pages import DoubleFreeError, PageAllocator


def ids(slots: torch.Tensor | None) -> list[int]:
    assert slots is not None
    assert slots.dtype == torch.int64 and slots.dim() == 1
    return slots.tolist()


def test_alloc_hands_out_lowest_slots_first_and_never_slot_0() -> None:
    allocator = PageAllocator(6)
    assert allocator.num_pages == 6 and allocator.num_free_pages == 6
    assert ids(allocator.alloc(2)) == [1, 2]
    assert ids(allocator.alloc(3)) == [3, 4, 5]
    assert allocator.num_free_pages == 1 and allocator.num_used_pages == 5
    assert ids(allocator.alloc(0)) == []
    assert ids(allocator.alloc(1)) == [6]
    assert allocator.alloc(1) is None


def test_alloc_returns_none_and_takes_nothing_when_too_few_are_free() -> None:
    allocator = PageAllocator(4)
    allocator.alloc(3)
    assert allocator.alloc(2) is None
    assert allocator.num_free_pages == 1
    assert ids(allocator.alloc(1)) == [4]


def test_freed_slots_go_to_the_back_in_the_given_order() -> None:
    allocator = PageAllocator(6)
    allocator.alloc(4)  # 1 2 3 4; free: 5 6
    allocator.free(torch.tensor([3, 1]))
    assert allocator.free_pages.tolist() == [5, 6, 3, 1]
    assert ids(allocator.alloc(3)) == [5, 6, 3]
    allocator.free(torch.tensor([2]))
    assert ids(allocator.alloc(2)) == [1, 2]


def test_returned_slots_are_not_a_view_of_the_free_list() -> None:
    allocator = PageAllocator(4)
    slots = allocator.alloc(2)
    assert slots is not None
    slots[0] = 99
    assert allocator.free_pages.tolist() == [3, 4]
    assert ids(allocator.alloc(2)) == [3, 4]


def test_double_free_raises_and_frees_nothing() -> None:
    allocator = PageAllocator(4)
    allocator.alloc(2)
    allocator.free(torch.tensor([1]))
    with pytest.raises(DoubleFreeError, match="page 1 is already free"):
        allocator.free(torch.tensor([2, 1]))
    assert allocator.free_pages.tolist() == [3, 4, 1]
    with pytest.raises(DoubleFreeError, match="page 3"):
        allocator.free(torch.tensor([3]))  # never allocated
    with pytest.raises(DoubleFreeError, match="duplicates"):
        allocator.free(torch.tensor([2, 2]))
    assert allocator.num_free_pages == 3


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        (torch.tensor([0]), r"\[1, 4\]"),
        (torch.tensor([5]), r"\[1, 4\]"),
        (torch.tensor([-1]), r"\[1, 4\]"),
        (torch.tensor([1], dtype=torch.int32), "int64"),
        (torch.tensor([[1]]), "1-D"),
    ],
)
def test_free_rejects_bad_slots(slots: torch.Tensor, message: str) -> None:
    allocator = PageAllocator(4)
    allocator.alloc(4)
    with pytest.raises(ValueError, match=message):
        allocator.free(slots)
    assert allocator.num_free_pages == 0


def test_free_of_nothing_is_a_no_op() -> None:
    allocator = PageAllocator(2)
    allocator.free(torch.empty(0, dtype=torch.int64))
    assert allocator.free_pages.tolist() == [1, 2]


def test_clear_restores_ascending_order() -> None:
    allocator = PageAllocator(3)
    allocator.alloc(3)
    allocator.free(torch.tensor([2, 3, 1]))
    allocator.clear()
    assert ids(allocator.alloc(3)) == [1, 2, 3]


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_allocator_validates_num_slots(bad: object) -> None:
    with pytest.raises(ValueError, match="num_pages"):
        PageAllocator(bad)  # type: ignore[arg-type]


def test_alloc_rejects_negative() -> None:
    with pytest.raises(ValueError, match="num"):
        PageAllocator(2).alloc(-1)


def test_kv_pool_shapes_and_write() -> None:
    pool = KVPool(num_layers=2, num_slots=5, num_kv_heads=3, head_dim=4)
    assert len(pool.k) == len(pool.v) == 2
    assert pool.k[1].shape == (6, 3, 4) and pool.k[1].dtype == torch.float32
    assert pool.allocator.num_pages == 5
    k = torch.arange(24, dtype=torch.float64).view(2, 3, 4)
    pool.write(1, torch.tensor([4, 2]), k, -k)
    assert pool.k[1].dtype == torch.float32
    assert torch.equal(pool.k[1][4], k[0].float()) and torch.equal(pool.k[1][2], k[1].float())
    assert torch.equal(pool.v[1][2], -k[1].float())
    assert not pool.k[0].any() and not pool.k[1][[0, 1, 3, 5]].any()


def test_kv_pool_write_accepts_non_contiguous_inputs() -> None:
    pool = KVPool(1, 4, 2, 3)
    k = torch.arange(12.0).view(3, 2, 2)[..., :1].expand(3, 2, 3)[:2]
    pool.write(0, torch.tensor([1, 3]), k, k)
    assert torch.equal(pool.v[0][3], k[1])


def test_bytes_per_slot_and_budget() -> None:
    pool = KVPool(30, 8, 3, 64, dtype=torch.bfloat16)
    assert pool.bytes_per_slot == 2 * 30 * 3 * 64 * 2 == 23040
    assert pool.num_bytes == 23040 * 9
    # the sink row counts against the budget
    assert KVPool.num_slots_for_budget(23040 * 10, 30, 3, 64, torch.bfloat16) == 9
    assert KVPool.num_slots_for_budget(23040 * 10 + 23039, 30, 3, 64, torch.bfloat16) == 9
    assert KVPool.num_slots_for_budget(23040 * 10, 30, 3, 64) == 4  # fp32 by default
    with pytest.raises(ValueError, match="budget_bytes"):
        KVPool.num_slots_for_budget(23040 * 2 - 1, 30, 3, 64, torch.bfloat16)


@pytest.mark.parametrize("field", ["num_layers", "num_slots", "num_kv_heads", "head_dim"])
def test_kv_pool_validates_sizes(field: str) -> None:
    sizes = {"num_layers": 1, "num_slots": 1, "num_kv_heads": 1, "head_dim": 1, field: 0}
    with pytest.raises(ValueError, match=field):
        KVPool(**sizes)
