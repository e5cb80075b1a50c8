"""The `local` backend: programs run on our own runtime (`sgl_lang.runtime`) in this process.

`local` is the embedded SmolLM2, `local:PATH` a Hugging Face model folder or a `.gguf` file.
One engine is loaded per model and engine options per process, on first use, and shared by
every backend on them (`sgl_lang.bridge.registry`). Prompts reach it through the bridge: chat
rendering (`bridge/render.py`), token healing (`bridge/healing.py`), sampling translation
(`bridge/sampling.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sgl_lang.bridge.options import EngineOptions
from sgl_lang.bridge.registry import engine_key, loaded_engine, shared_engine
from sgl_lang.protocol import (
    GEN_OPTIONS,
    SELECT_METHODS,
    Backend,
    BackendError,
    CachedSplit,
    Capabilities,
    EngineTotals,
    GenRequest,
    GenResult,
    Prompt,
)

if TYPE_CHECKING:
    from sgl_lang.bridge.engine import BridgedEngine

ENFORCED_CONSTRAINTS = frozenset({"regex", "json", "choices", "grammar"})  # runtime/constrained.py


def create(
    target: str, *, engine_options: EngineOptions | None = None, model: Path | None = None
) -> LocalBackend:
    """`local` (target "": `model`, else the embedded SmolLM2) or `local:PATH` (a HF folder
    or a .gguf), its engine built with `engine_options`."""
    if not target:
        return LocalBackend(model, engine_options)
    path = Path(target).expanduser()
    if not path.exists():
        raise BackendError(f"local model not found: {target}")
    return LocalBackend(path, engine_options)


class LocalBackend(Backend):
    """Generation, scoring and prefix caching on the in-process runtime `Engine`.

    Creating one is cheap (nothing is imported or loaded); the first call loads the model's
    shared engine in a worker thread. `close()` only retires this backend: the engine stays
    loaded for the next backend on the same model and is closed at interpreter exit (or by
    `close_engines()`).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        options: EngineOptions | None = None,
        *,
        bridged: BridgedEngine | None = None,
    ) -> None:
        self.name = "local" if model_path is None else f"local:{model_path}"
        self.capabilities = Capabilities(
            ENFORCED_CONSTRAINTS,
            frozenset(SELECT_METHODS),
            images=False,
            tools=True,
            gen_options=GEN_OPTIONS,
        )
        self.model_path = model_path
        self.options = options or EngineOptions()
        self._key = engine_key(model_path, self.options)
        self._given = bridged
        self._closed = False

    def stats(self) -> EngineTotals | None:
        """The engine's counters since it started (None before it is loaded)."""
        bridged = self._loaded()
        return bridged.stats() if bridged is not None else None

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit | None:
        """The prompt as the model reads it, split after its first `num_cached_tokens`
        tokens (None before the engine is loaded, or for a prompt the model cannot read)."""
        bridged = self._loaded()
        return bridged.split_cached(prompt, num_cached_tokens) if bridged is not None else None

    async def warm_up(self) -> None:
        """Load the shared engine now."""
        await self.bridged()

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        return await (await self.bridged()).generate(request, on_chunk)

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        return await (await self.bridged()).score(prompt, choices, method)

    async def cache_prefix(self, prompt: Prompt) -> None:
        await (await self.bridged()).cache_prefix(prompt)

    async def close(self) -> None:
        self._closed = True

    async def bridged(self) -> BridgedEngine:
        """The engine this backend drives: the one it was given, else the shared engine of
        its model and options, loaded on first use."""
        if self._closed:
            raise BackendError(f"the `{self.name}` backend is closed")
        bridged = self._loaded()
        if bridged is None:
            bridged = await asyncio.to_thread(shared_engine, self.model_path, self.options)
        return bridged

    def _loaded(self) -> BridgedEngine | None:
        return self._given or loaded_engine(self._key)
