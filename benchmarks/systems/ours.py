"""sgl-lang itself: the local backend on an engine built with the benchmark's config
(radix cache on or off, scheduling policy)."""

from __future__ import annotations

from typing import Any, ClassVar

from sgl_lang.backends.local import LocalBackend
from sgl_lang.bridge.engine import BridgedEngine
from sgl_lang.protocol import Backend

from .base import System, TokenCounts

KV_CACHE_GB = 2.0


class Ours(System):
    """Our runtime with `EngineConfig` overrides (`enable_cache`, `policy`, `quantize`)."""

    _loaded: ClassVar[dict[str, Any]] = {}  # one model load per weight layout, shared

    def __init__(self, name: str, description: str, **config: Any) -> None:
        self.name, self.description, self.config = name, description, config
        self._shared: BridgedEngine | None = None

    def start(self) -> None:
        from sgl_lang.runtime.config import EngineConfig
        from sgl_lang.runtime.engine import Engine
        from sgl_lang.runtime.model_loader import load_model
        from sgl_lang.runtime.quantization import QuantSpec

        config = EngineConfig(kv_cache_gb=KV_CACHE_GB, **self.config)
        spec = QuantSpec(config.quantize, config.quantize_group_size, config.quantize_lm_head)
        if spec.tag not in Ours._loaded:
            Ours._loaded[spec.tag] = load_model(None, quantize=spec)
        self._shared = BridgedEngine(Engine(config, model=Ours._loaded[spec.tag]))

    def backend(self) -> Backend:
        assert self._shared is not None, "start() first"
        return LocalBackend(bridged=self._shared)  # on our engine, not the shared one

    def reset(self) -> None:
        if self._shared is not None:
            self._shared.engine.flush_cache()

    def token_counts(self) -> TokenCounts:
        assert self._shared is not None, "start() first"
        stats = self._shared.engine.stats()
        return TokenCounts(stats.num_prompt_tokens, stats.num_cached_tokens)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.engine.close()
            self._shared = None
