"""llama.cpp (`llama-cpp-python`, built from source) on the same GGUF, in its own virtual
environment: a worker process (`benchmarks/peers/llamacpp_worker.py`) holding one `Llama`,
driven one call at a time. Its cache is llama.cpp's: the KV of the previous prompt, reused up
to the first differing token. Regex constraints: llama.cpp takes GBNF grammars, and the
benchmark translates none, so `json_decode` is reported as not run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sgl_lang.protocol import Backend, BackendError, Capabilities, GenRequest, GenResult, Prompt

from .base import System, TokenCounts, Unavailable, normalized_scores, prompt_ids, score_inputs
from .peer import gguf_path, peer_python, safetensors_dir

WORKER = Path(__file__).resolve().parents[1] / "peers" / "llamacpp_worker.py"
NUM_CONTEXT_TOKENS = 8192


class LlamaCpp(System):
    name = "llamacpp"
    description = "llama.cpp (llama-cpp-python) on the Q4_1 GGUF, previous-prompt KV reuse"
    parallel = 64  # the worker serialises calls; this only keeps programs queued

    def __init__(self) -> None:
        self._worker: subprocess.Popen[str] | None = None
        self._tokenizer: Any = None
        self._lock = asyncio.Lock()
        self._counts = [0, 0]

    def start(self) -> None:
        python = peer_python("llamacpp")
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(safetensors_dir())
        self._worker = subprocess.Popen(
            [str(python), str(WORKER), str(gguf_path()), str(NUM_CONTEXT_TOKENS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._worker.stdout is not None
        if not self._worker.stdout.readline():
            raise Unavailable(f"the llama.cpp worker exited ({self._worker.wait()})")

    def cannot_run(self, workload: str) -> str | None:
        if workload == "json_decode":
            return "regex constraints: llama.cpp takes GBNF grammars, no regex translation"
        return None

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the worker, blocking (run it in a thread)."""
        assert self._worker is not None and self._worker.stdin and self._worker.stdout
        self._worker.stdin.write(json.dumps(request) + "\n")
        self._worker.stdin.flush()
        line = self._worker.stdout.readline()
        if not line:
            raise BackendError(f"llama.cpp: the worker died (exit status {self._worker.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BackendError(f"llama.cpp: {answer['error']}")
        self._counts[0] += answer.get("prompt_tokens", 0)
        self._counts[1] += answer.get("cached_tokens", 0)
        return answer

    def backend(self) -> Backend:
        self._lock = asyncio.Lock()  # each workload runs on its own event loop
        return LlamaCppBackend(self)

    def reset(self) -> None:
        self.call({"op": "reset"})

    def token_counts(self) -> TokenCounts:
        return TokenCounts(*self._counts)

    def close(self) -> None:
        if self._worker is not None:
            assert self._worker.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # a worker that died
                self._worker.stdin.close()
            self._worker.wait(timeout=30)
            self._worker = None


class LlamaCppBackend(Backend):
    def __init__(self, system: LlamaCpp) -> None:
        self.name = "llamacpp"
        self.capabilities = Capabilities(frozenset(), frozenset({"normalized"}))
        self.system = system

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self.system._lock:
            return await asyncio.to_thread(self.system.call, request)

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        if request.constraint is not None:
            raise BackendError("llama.cpp: regex/JSON constraints are not translated to GBNF")
        answer = await self._call(
            {
                "op": "generate",
                "ids": prompt_ids(self.system._tokenizer, request.prompt),
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "top_p": request.top_p,
                "top_k": request.top_k,
                "stop": list(request.stop),
                "seed": request.seed,
                "ignore_eos": request.ignore_eos,
            }
        )
        reason = answer["finish_reason"]
        if reason == "stop" and not any(request.stop):
            reason = "eos"
        if on_chunk is not None and answer["text"]:
            on_chunk(answer["text"])
        return GenResult(
            answer["text"],
            reason,
            answer["prompt_tokens"],
            answer["completion_tokens"],
            answer["cached_tokens"],
        )

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        if method != "normalized":
            raise BackendError(f"select method `{method}` is not measured on llama.cpp")
        prefix, choice_ids = score_inputs(self.system._tokenizer, prompt, choices)
        answer = await self._call({"op": "score", "prefix": prefix, "choices": choice_ids})
        return normalized_scores(answer["logprobs"])
