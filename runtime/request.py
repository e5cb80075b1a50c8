"""A request's life in the engine: its tokens, its KV slots, its sampler state, its output stream."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from sgl_lang.runtime.prefix_cache import TreeNode
    from sgl_lang.runtime.sampling import SamplingParams, TopLogprobs


class RequestStatus(Enum):
    WAITING = "waiting"  # queued (new, deferred or retracted); holds no slots
    PREFILLING = "prefilling"  # admitted; its prompt is being extended chunk by chunk
    DECODING = "decoding"  # in the decode batch
    FINISHED = "finished"


class FinishReason(Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_new_tokens or the context / pool limit
    ABORT = "abort"  # cancelled
    ERROR = "error"  # the request could not run (see GenerationMeta.error)


class RequestKind(Enum):
    GENERATE = "generate"
    PREFILL = "prefill"  # no output token: cache a prefix, or score prompt tokens


class GenerationMeta(NamedTuple):
    """What the final chunk of a request carries."""

    rid: str
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache at admission
    completion_tokens: int
    finish_reason: FinishReason
    output_ids: tuple[int, ...] = ()
    output_logprobs: tuple[float, ...] | None = None  # when params.return_logprobs
    output_top_logprobs: tuple[TopLogprobs, ...] | None = None  # when top_logprobs_num
    prompt_logprobs: tuple[float, ...] | None = None  # of prompt_ids[logprob_start_len:]
    prompt_top_logprobs: tuple[TopLogprobs, ...] | None = None  # theirs, when top_logprobs_num
    error: str | None = None


class Chunk(NamedTuple):
    """A piece of streamed output; the last chunk of a request has `meta`."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] | None = None
    meta: GenerationMeta | None = None


class Completion(NamedTuple):
    """A whole generation (the synchronous API's result)."""

    text: str
    meta: GenerationMeta


class ChoiceLogprobs(NamedTuple):
    """One choice scored as a continuation of a prefix: its tokens, their log-probs after the
    prefix, and (when asked) after only a neutral prefix. Turning these into `select` scores
    is the caller's business."""

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]
    unconditional_logprobs: tuple[float, ...] | None = None


class RequestError(RuntimeError):
    """A request finished with FinishReason.ERROR (too long for the context or the KV pool)."""

    def __init__(self, meta: GenerationMeta) -> None:
        super().__init__(f"request {meta.rid}: {meta.error}")
        self.meta = meta


class OutputStream:
    """Chunks from the engine thread to one consumer: an asyncio loop or a blocking reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._async: asyncio.Queue[Chunk] | None = asyncio.Queue() if loop else None
        self._sync: queue.SimpleQueue[Chunk] = queue.SimpleQueue()

    def put(self, chunk: Chunk) -> None:
        """Thread-safe; a consumer whose loop has closed is ignored."""
        if self._loop is None:
            self._sync.put(chunk)
            return
        assert self._async is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(self._async.put_nowait, chunk)

    async def get(self) -> Chunk:
        if self._async is None:
            raise RuntimeError("OutputStream.get: this stream was made for a blocking reader")
        return await self._async.get()

    def get_sync(self, timeout: float | None = None) -> Chunk:
        if self._loop is not None:
            raise RuntimeError("OutputStream.get_sync: this stream belongs to an asyncio loop")
        return self._sync.get(timeout=timeout)

    def completion(self) -> Completion:
        """Block until the final chunk; the whole text and its meta (a blocking reader's)."""
        parts = []
        while (chunk := self.get_sync()).meta is None:
            parts.append(chunk.text)
        return Completion("".join(parts) + chunk.text, chunk.meta)


_NO_SLOTS = torch.empty(0, dtype=torch.int64)


@dataclass(eq=False)
class Request:
    """One prompt in flight.

    KV invariant: `slots[i]` holds the K/V of `fill_ids[i]` for i < `kv_len`, laid out in pages
    (pages.py). The pages of the first `tree_len` slots belong to the prefix cache and are
    locked through `last_node` (None: no lock held); the rest are the request's own
    (cache_manager.py). The last output token is never in the KV yet: it is the next
    decode step's input (with the tokens jump-forward appended after the last sampled one, if any).
    """

    rid: str
    arrival: int  # submission order, for fcfs and tie-breaks
    prompt_ids: list[int]
    params: SamplingParams
    kind: RequestKind = RequestKind.GENERATE
    logprob_start_len: int | None = None  # PREFILL: return logprobs of prompt_ids[start:]
    stream: OutputStream | None = None
    decoder: Any = None  # IncrementalDecoder
    generator: torch.Generator | None = None
    constraint: Any = None  # TokenConstraint (constrained.py) when params.constraint is set

    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    prompt_logprobs: list[float] = field(default_factory=list)
    prompt_top_logprobs: list[TopLogprobs] = field(default_factory=list)
    slots: torch.Tensor = field(default_factory=lambda: _NO_SLOTS)
    tree_len: int = 0
    last_node: TreeNode | None = None
    num_cached_tokens: int | None = None  # set at first admission
    enqueue_step: int = 0  # scheduler step when it (re)entered the waiting queue
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def fill_ids(self) -> list[int]:
        """All tokens of the sequence so far: prompt then output."""
        return self.prompt_ids + self.output_ids if self.output_ids else self.prompt_ids

    @property
    def fill_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def kv_len(self) -> int:
        return len(self.slots)

    @property
    def max_new_tokens(self) -> int:
        return self.params.max_new_tokens if self.kind is RequestKind.GENERATE else 0

    @property
    def max_match_len(self) -> int:
        """How much of `fill_ids` may come from the cache: the tokens whose logits are wanted
        must be computed (the last one to sample, or those before the scored prompt tokens)."""
        if self.kind is RequestKind.PREFILL:
            if self.logprob_start_len is None:
                return self.fill_len
            return max(0, self.logprob_start_len - 1)
        return self.fill_len - 1

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def meta(self) -> GenerationMeta:
        return GenerationMeta(
            rid=self.rid,
            prompt_tokens=len(self.prompt_ids),
            cached_tokens=self.num_cached_tokens or 0,
            completion_tokens=len(self.output_ids),
            finish_reason=self.finish_reason or FinishReason.ABORT,
            output_ids=tuple(self.output_ids),
            output_logprobs=tuple(self.output_logprobs) if self.params.return_logprobs else None,
            output_top_logprobs=(
                tuple(self.output_top_logprobs) if self.params.top_logprobs_num else None
            ),
            prompt_logprobs=(
                tuple(self.prompt_logprobs) if self.logprob_start_len is not None else None
            ),
            prompt_top_logprobs=(
                tuple(self.prompt_top_logprobs)
                if self.logprob_start_len is not None and self.params.top_logprobs_num
                else None
            ),
            error=self.error,
        )

    def emit(self, text: str, token_ids: tuple[int, ...] = (), logprobs: tuple | None = None):
        if self.stream is not None and (text or token_ids):
            self.stream.put(Chunk(text, token_ids, logprobs))

    def emit_final(self, text: str = "") -> None:
        if self.stream is not None:
            self.stream.put(Chunk(text, meta=self.meta()))
