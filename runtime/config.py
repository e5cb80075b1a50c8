"""EngineConfig: every knob of the engine, frozen and validated in one place."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

POLICIES = ("lpm", "dfs-weight", "fcfs")
GRAMMAR_ENGINES = ("llguidance", "xgrammar")  # constrained decoding: grammar_engines.py
DTYPES = ("float32", "bfloat16", "float16")
KERNELS = ("auto", "torch", "vllm")  # runtime/kernels: auto = vllm where its ops import
QUANT_MODES = ("none", "int8", "int4")  # weight-only quantization: docs/quantization.md
GROUP_SIZES = (32, 64, 128, 256)  # int4 group sizes the kernel accepts
DENSE_ROWS = 24  # quantized steps of this many rows or more run dense: docs/quantization.md
DEFAULT_KV_CACHE_CAP_BYTES = 2 * 1024**3
DEFAULT_KV_CACHE_FRACTION = 0.2  # of the memory available when the engine starts


@dataclass(frozen=True)
class EngineConfig:
    """How the engine loads its model, sizes its KV pool and schedules requests.

    The KV pool is sized by `kv_cache_tokens` (slots) or `kv_cache_gb`; with neither, by
    min(2 GiB, 20% of available memory). `new_token_ratio` is the share of a request's remaining
    `max_new_tokens` that admission reserves in the pool: below 1.0 the engine admits more requests
    and retracts (requeues) the least advanced one when decoding runs out of slots.
    """

    model_path: str | Path | None = None  # None = the embedded SmolLM2
    device: str = "cpu"
    dtype: str = "float32"  # fp32 on CPUs without AVX512-BF16
    kv_cache_gb: float | None = None
    kv_cache_tokens: int | None = None
    prefill_chunk_tokens: int = 512  # token budget of one extend step
    max_running_requests: int = 64
    policy: str = "lpm"
    enable_cache: bool = True
    num_threads: int | None = None  # torch threads; None leaves torch's default
    max_queue_match: int = 128  # waiting requests matched against the tree per step
    aging_steps: int | None = 256  # a request waiting longer than this goes first; None = never
    in_batch_share_min_tokens: int = 32  # uncached shared prefix that defers a request a step
    new_token_ratio: float = 1.0
    max_context_len: int | None = None  # None = the model's max_position_embeddings
    default_max_new_tokens: int = 256
    grammar_engine: str = "llguidance"  # constrained decoding: or "xgrammar" (optional extra)
    jump_forward: bool = True  # append tokens a constraint forces without a decode step
    grammar_compile_timeout: float = 30.0  # seconds; a constraint compiling longer fails
    kernels: str = "auto"  # the forward's kernel set: auto | torch | vllm (docs/kernels.md)
    page_size: int | None = None  # KV slots per page; None = what the kernels need (vllm: 32)
    quantize: str = "none"  # linear weights: "none" | "int8" | "int4" (runtime/quantization.py)
    quantize_group_size: int = 32  # int4: input columns sharing one scale and zero
    quantize_lm_head: bool = True  # quantize the output projection too
    quantize_dense_rows: int = DENSE_ROWS  # steps of more rows use dense fp32 copies; 0 = never

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"EngineConfig.device: expected 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype: expected one of {DTYPES}, got {self.dtype!r}")
        if self.kv_cache_gb is not None and self.kv_cache_tokens is not None:
            raise ValueError("EngineConfig.kv_cache_gb and kv_cache_tokens are exclusive")
        if self.kv_cache_gb is not None and not self.kv_cache_gb > 0:
            raise ValueError(f"EngineConfig.kv_cache_gb must be > 0, got {self.kv_cache_gb}")
        if self.policy not in POLICIES:
            raise ValueError(
                f"EngineConfig.policy: expected one of {POLICIES}, got {self.policy!r}"
            )
        if self.grammar_engine not in GRAMMAR_ENGINES:
            raise ValueError(
                f"EngineConfig.grammar_engine: expected one of {GRAMMAR_ENGINES}, "
                f"got {self.grammar_engine!r}"
            )
        if self.kernels not in KERNELS:
            raise ValueError(
                f"EngineConfig.kernels: expected one of {KERNELS}, got {self.kernels!r}"
            )
        if self.quantize not in QUANT_MODES:
            raise ValueError(
                f"EngineConfig.quantize: expected one of {QUANT_MODES}, got {self.quantize!r}"
            )
        if self.quantize_group_size not in GROUP_SIZES:
            raise ValueError(
                f"EngineConfig.quantize_group_size: expected one of {GROUP_SIZES}, "
                f"got {self.quantize_group_size!r}"
            )
        if not isinstance(self.quantize_dense_rows, int) or self.quantize_dense_rows < 0:
            raise ValueError(
                "EngineConfig.quantize_dense_rows must be an integer >= 0, "
                f"got {self.quantize_dense_rows!r}"
            )
        if not 0 < self.new_token_ratio <= 1:
            raise ValueError(
                f"EngineConfig.new_token_ratio must be in (0, 1], got {self.new_token_ratio}"
            )
        if not self.grammar_compile_timeout > 0:
            raise ValueError(
                "EngineConfig.grammar_compile_timeout must be > 0, "
                f"got {self.grammar_compile_timeout}"
            )
        positive = ("kv_cache_tokens", "prefill_chunk_tokens", "max_running_requests",
                    "num_threads", "max_queue_match", "aging_steps", "in_batch_share_min_tokens",
                    "max_context_len", "default_max_new_tokens", "page_size")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if (
            self.kv_cache_tokens is not None
            and self.page_size is not None
            and self.kv_cache_tokens < self.page_size
        ):
            raise ValueError(
                f"EngineConfig.kv_cache_tokens ({self.kv_cache_tokens}) must hold one page "
                f"(page_size {self.page_size})"
            )

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> EngineConfig:
        """Build from keyword arguments, naming any unknown one."""
        return cls().replace(**kwargs)

    def replace(self, **changes: object) -> EngineConfig:
        """A validated copy with `changes` applied; an unknown name raises ValueError."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"EngineConfig: unknown option(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def kv_cache_bytes(self) -> int:
        """The KV budget in bytes (used when `kv_cache_tokens` is not set)."""
        if self.kv_cache_gb is not None:
            return int(self.kv_cache_gb * 1024**3)
        return min(DEFAULT_KV_CACHE_CAP_BYTES, int(DEFAULT_KV_CACHE_FRACTION * available_memory()))


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable, else a sysconf guess)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3
