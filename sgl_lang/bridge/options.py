"""The engine options a run may set (`sgl.toml`, the command line), as plain values: the app
layer builds them without importing the runtime, the bridge turns them into `EngineConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KV_CACHE_GB = 1.0  # ~22k tokens of SmolLM2-135M; far below a 24 GiB machine's memory


@dataclass(frozen=True)
class EngineOptions:
    """The engine knobs a program's run may set (`sgl.toml`, CLI); None keeps the default.
    Backends with equal options on the same model share one engine."""

    kv_cache_gb: float | None = None  # None: KV_CACHE_GB
    policy: str | None = None
    enable_cache: bool = True
    max_running_requests: int | None = None
    num_threads: int | None = None
    kernels: str | None = None  # None: auto
    quantize: str | None = None  # "none" | "int8" | "int4": docs/quantization.md
    quantize_group_size: int | None = None
    quantize_dense_rows: int | None = None  # 0: never use dense copies (docs/quantization.md)

    def engine_fields(self) -> dict[str, Any]:
        """Keyword arguments of `EngineConfig`."""
        fields: dict[str, Any] = {
            "kv_cache_gb": self.kv_cache_gb or KV_CACHE_GB,
            "enable_cache": self.enable_cache,
            "policy": self.policy,
            "max_running_requests": self.max_running_requests,
            "num_threads": self.num_threads,
            "kernels": self.kernels,
            "quantize": self.quantize,
            "quantize_group_size": self.quantize_group_size,
            "quantize_dense_rows": self.quantize_dense_rows,
        }
        return {name: value for name, value in fields.items() if value is not None}
