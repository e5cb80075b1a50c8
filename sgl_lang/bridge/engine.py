"""`BridgedEngine`: a loaded runtime `Engine` driven in protocol terms — prompts rendered and
healed, requests turned into sampling parameters, the engine's results and failures into
`GenResult`s and `BackendError`s. The `local` backend and `sgl serve` both drive one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sgl_lang.bridge.healing import Heal, HealingMasks, Unhealed, plan_healing
from sgl_lang.bridge.render import encode, render_prompt, score_split
from sgl_lang.bridge.sampling import min_tokens_mask, sampling_params
from sgl_lang.bridge.tools import generate_with_tools
from sgl_lang.protocol import (
    BackendError,
    BackendUnavailable,
    CachedSplit,
    GenRequest,
    GenResult,
    Prompt,
    TokenLogprob,
    choice_scores,
    with_reasoning,
)

if TYPE_CHECKING:
    from sgl_lang.runtime.engine import Engine
    from sgl_lang.runtime.request import Chunk, GenerationMeta
    from sgl_lang.runtime.sampling import SamplingParams
    from sgl_lang.runtime.stats import EngineStats

OnChunk = Callable[[str], None]


class BridgedEngine:
    """Generation, scoring and prefix caching on `engine`, in protocol terms. Safe under
    concurrent calls from one event loop (the engine batches them); closing the engine is
    its owner's business."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        config = engine.model_config
        self._healing_masks = HealingMasks(
            engine.tokenizer, config.vocab_size, config.eos_token_ids
        )

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def stats(self) -> EngineStats:
        """The engine's counters since it started."""
        return self.engine.stats()

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The token ids the model reads for `prompt` (without healing)."""
        return encode(self.engine, render_prompt(self.tokenizer, prompt))

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit | None:
        """The prompt as the model reads it, split after its first `num_cached_tokens`
        tokens (for traces; None for a prompt the model cannot read)."""
        try:
            ids = self.prompt_ids(prompt)
        except BackendError:
            return None
        flags = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        cached = self.tokenizer.decode(ids[:num_cached_tokens], **flags)
        return CachedSplit(cached, self.tokenizer.decode(ids[num_cached_tokens:], **flags))

    async def generate(self, request: GenRequest, on_chunk: OnChunk | None = None) -> GenResult:
        """`Backend.generate`: the prompt rendered with the chat template, token-healed when
        `request.heal` (healing.py). Rendering and tokenizing run in a worker thread: a long
        prompt does not stall the event loop's other work. With `tools`, the output is a
        constrained tool call or answer (tools.py)."""
        if request.tools:
            return await generate_with_tools(self.generate, request, on_chunk)
        prompt_ids, params, healed_text = await asyncio.to_thread(self._prepare, request)
        return await self._finished(request, prompt_ids, params, on_chunk, healed_text=healed_text)

    def _prepare(self, request: GenRequest) -> tuple[list[int], SamplingParams, str]:
        """The prompt ids, sampling parameters and healed text of `request` (blocking; on a
        worker thread, whose OpenMP workers the token masks' ops start are freed after, as
        the engine needs its own to be the only ones: runtime/openmp.py)."""
        from sgl_lang.runtime.openmp import release_thread_team

        try:
            rendered = render_prompt(self.tokenizer, request.prompt)
            prompt_ids = encode(self.engine, rendered)
            heal = plan_healing(self._healing_masks, request, rendered, prompt_ids)
            if heal is None:
                return prompt_ids, self._params(request), ""
            return prompt_ids[:-1], self._params(request, heal), heal.text
        finally:
            release_thread_team()

    def _params(self, request: GenRequest, heal: Heal | None = None) -> SamplingParams:
        """The sampling parameters of `request`, healed by `heal`; with `min_tokens`, the
        model's end tokens are masked until then (the healed token does not count)."""
        mask = heal.mask if heal is not None else None
        if request.min_tokens and not request.ignore_eos:
            config = self.engine.model_config
            num_tokens = request.min_tokens + (heal is not None)
            mask = min_tokens_mask(mask, num_tokens, config.eos_token_ids, config.vocab_size)
        return sampling_params(request, mask, heal.text if heal is not None else "")

    async def generate_ids(
        self, prompt_ids: Sequence[int], request: GenRequest, on_chunk: OnChunk | None = None
    ) -> GenResult:
        """Generation from token ids as they are, with `request`'s sampling fields and
        constraint (its prompt and `heal` are not used)."""
        return await self._finished(request, list(prompt_ids), self._params(request), on_chunk)

    async def _finished(
        self,
        request: GenRequest,
        prompt_ids: list[int],
        params: SamplingParams,
        on_chunk: OnChunk | None,
        healed_text: str = "",
    ) -> GenResult:
        """Run one generation; with `reasoning`, the `<think>` block is split off and only the
        answer goes to `on_chunk`, at the end."""
        if not request.reasoning:
            return await self._generate(prompt_ids, params, on_chunk, healed_text)
        result = with_reasoning(await self._generate(prompt_ids, params, None, healed_text))
        if on_chunk is not None and result.text:
            on_chunk(result.text)
        return result

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        """`Backend.score`: the engine's log-probs of each choice, scored by `method` (the
        prompt tokenized in a worker thread)."""
        prefix_ids, choices = await asyncio.to_thread(score_split, self.tokenizer, prompt, choices)
        unconditional = method == "unconditional"
        with engine_errors():
            scored = await self.engine.score(prefix_ids, list(choices), unconditional=unconditional)
            return choice_scores(
                method,
                [s.token_logprobs for s in scored],
                [s.unconditional_logprobs or () for s in scored] if unconditional else None,
            )

    async def cache_prefix(self, prompt: Prompt) -> None:
        """`Backend.cache_prefix`: compute the prompt's KV now. A hint only, so a prompt that
        cannot run is left for the request that follows to report."""
        with contextlib.suppress(BackendError):
            rendered = await asyncio.to_thread(render_prompt, self.tokenizer, prompt)
            if rendered.text:
                await self.prefill(await asyncio.to_thread(encode, self.engine, rendered))

    async def prefill(self, prompt_ids: list[int], *, logprobs: bool = False) -> GenerationMeta:
        """Compute `prompt_ids`' KV into the prefix cache without generating; with `logprobs`,
        the meta's `prompt_logprobs` are those of every token after the first."""
        with engine_errors():
            return await self.engine.prefill(prompt_ids, 1 if logprobs else None)

    async def _generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_chunk: OnChunk | None,
        healed_text: str,
    ) -> GenResult:
        """Run one generation. With `healed_text` (backed up from the prompt), the output
        starts with it: it is removed, and its token is not counted."""
        unhealed = Unhealed(healed_text)
        pieces: list[str] = []
        meta = None
        async with contextlib.aclosing(self._chunks(prompt_ids, params)) as chunks:
            async for chunk in chunks:
                meta = chunk.meta
                if piece := unhealed(chunk.text):
                    pieces.append(piece)
                    if on_chunk is not None:
                        on_chunk(piece)
        if meta is None:
            raise BackendError("the local engine ended a request without a result")
        reason = finish_reason(meta, self.engine.model_config.eos_token_ids, params.ignore_eos)
        num_completion = meta.completion_tokens - (bool(healed_text) and meta.completion_tokens > 0)
        logprobs = self._token_logprobs(meta, reason, healed_text)
        return GenResult(
            "".join(pieces),
            reason,
            meta.prompt_tokens,
            num_completion,
            meta.cached_tokens,
            logprobs=logprobs if params.return_logprobs else None,
        )

    def _token_logprobs(
        self, meta: GenerationMeta, reason: str, healed_text: str
    ) -> tuple[TokenLogprob, ...]:
        """Each generated token with its log-prob and top alternatives (none when not asked
        for). The first token's text (and its alternatives') lose the healed text they start
        with, and it is left out if that was all of it; an ending EOS is left out too."""
        if meta.output_logprobs is None:
            return ()
        num_tokens = len(meta.output_logprobs) - (reason == "eos")
        tops = meta.output_top_logprobs or ((),) * len(meta.output_logprobs)
        steps = list(zip(meta.output_ids, meta.output_logprobs, tops, strict=False))[:num_tokens]
        tokens = [self._token(*step, healed_text if i == 0 else "") for i, step in enumerate(steps)]
        if tokens and healed_text and not tokens[0].text:
            del tokens[0]
        return tuple(tokens)

    def _token(
        self, token_id: int, logprob: float, top: Sequence[tuple[int, float]], healed_text: str
    ) -> TokenLogprob:
        """One step's token and its alternatives, their texts without `healed_text`."""

        def text(i: int) -> str:
            decoded = self.tokenizer.decode([i], clean_up_tokenization_spaces=False)
            return str(decoded).removeprefix(healed_text)

        return TokenLogprob(text(token_id), logprob, tuple((text(i), lp) for i, lp in top))

    async def _chunks(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[Chunk, None]:
        with engine_errors():
            async with contextlib.aclosing(self.engine.generate(prompt_ids, params)) as chunks:
                async for chunk in chunks:
                    yield chunk


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """The engine's failures as `BackendError`s: a request that cannot run (`RequestError`),
    parameters it refuses (ValueError), and as `BackendUnavailable` an engine closed or stopped
    after an internal error (RuntimeError)."""
    from sgl_lang.runtime.request import RequestError

    try:
        yield
    except RequestError as exc:
        raise BackendError(f"local model: {exc.meta.error}") from None
    except ValueError as exc:
        raise BackendError(f"local model: {exc}") from None
    except RuntimeError as exc:
        raise BackendUnavailable(f"local engine: {exc}") from None


def finish_reason(meta: GenerationMeta, eos_token_ids: Sequence[int], ignore_eos: bool) -> str:
    """`GenResult.finish_reason` of a finished request: "eos" when it stopped at an end of
    turn, "stop" at a stop string, "length" at its limit; any other end is an error."""
    reason = meta.finish_reason.value
    if reason == "stop":
        last_id = meta.output_ids[-1] if meta.output_ids else None
        return "eos" if last_id in eos_token_ids and not ignore_eos else "stop"
    if reason != "length":
        raise BackendError(f"the local engine ended the request ({reason})")
    return reason
