"""Our decode attention (`decode_attention.cpp`): paged attention of one new token per request
over the `vllm` kernels' KV layout, 20-29% faster than vLLM's CPU kernel over long contexts
(docs/kernels.md, "Decode attention"). Built once per machine with torch's C++ extension
loader into the sgl-lang cache; where it cannot be built (no compiler, no ninja), the `vllm`
kernels keep vLLM's op for every row."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

SOURCE = Path(__file__).with_name("decode_attention.cpp")
FLAGS = ["-O3", "-mavx2", "-mfma", "-ffast-math", "-fopenmp"]  # -fopenmp: compile only (.cpp)
HEAD_DIMS = (64, 128)  # the head sizes it is built for, with pages of 32 tokens
PAGE_SIZE = 32

DecodeAttention = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, float, int], Tensor]


@functools.cache
def load_decode_attention() -> DecodeAttention | None:
    """`decode_attention(q [R, H, D], k_cache, v_cache, block_table, seq_lens, scale,
    num_threads) -> [R, H, D]`, or None where it cannot be built here."""
    from torch.utils.cpp_extension import load

    from sgl_lang.runtime.model_loader import cache_dir

    build_dir = cache_dir() / "extensions" / "decode_attention"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        module = load(
            "sgl_decode_attention", [str(SOURCE)], extra_cflags=FLAGS,
            extra_ldflags=["-lmvec"], build_directory=str(build_dir), verbose=False,
        )  # fmt: skip
    except Exception:  # no compiler, no ninja, another libc: vLLM's op serves every row
        return None
    return module.decode_attention  # type: ignore[no-any-return]
