"""The `Backend` contract: what a backend enforces, the calls it answers, the error it raises,
and the optional hooks a trace asks of the engine under it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from sgl_lang.protocol.constraints import CONSTRAINT_KIND, Constraint
from sgl_lang.protocol.prompts import Prompt
from sgl_lang.protocol.requests import GenRequest, GenResult


class BackendError(Exception):
    """A backend could not answer: a plain message, no location. The language adds the
    location of the `gen`/`select` that made the call (`SglBackendError`)."""

    @property
    def message(self) -> str:
        return str(self)


class BackendUnavailable(BackendError):
    """The backend can serve no request now, whatever the request (its engine is closed or
    stopped after an internal error); a server answers 503 to it, not 400."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend enforces. `constraints` ⊆ {"regex", "json", "choices"} are enforced
    while decoding (others are checked after the fact by the interpreter); `select_methods`
    ⊆ {"normalized", "greedy", "unconditional"} can be scored (empty: `select` falls back
    to `gen choices=`); `images` says whether images (free or inside messages) reach the
    model; `tools` whether `GenRequest.tools` are offered to it (the model may answer with
    tool calls, `GenResult.tool_calls`); `gen_options` ⊆ `GEN_OPTIONS` are the optional
    `GenRequest` features it honours (`GenRequest.options`)."""

    constraints: frozenset[str]
    select_methods: frozenset[str]
    images: bool = False
    tools: bool = False
    gen_options: frozenset[str] = frozenset()

    def missing_options(self, request: GenRequest) -> list[str]:
        """The features `request` uses that this backend cannot honour, sorted."""
        return sorted(request.options - self.gen_options)

    def enforces(self, constraint: Constraint | None) -> bool:
        """Whether every output meets `constraint` (None: there is none to meet)."""
        return constraint is None or CONSTRAINT_KIND[type(constraint)] in self.constraints


GEN_OPTIONS = frozenset({"min_tokens", "stop_regex", "include_stop", "logprobs", "reasoning"})


class EngineTotals(Protocol):
    """What the engine under a backend has done since it started (`Backend.stats`)."""

    @property
    def num_prompt_tokens(self) -> int: ...
    @property
    def num_cached_tokens(self) -> int: ...  # prompt tokens served from the prefix cache
    @property
    def num_decode_tokens(self) -> int: ...
    @property
    def num_finished(self) -> int: ...
    @property
    def cache_hit_rate(self) -> float: ...
    @property
    def prefill_tokens_per_s(self) -> float: ...
    @property
    def decode_tokens_per_s(self) -> float: ...
    @property
    def mean_decode_batch_size(self) -> float: ...
    @property
    def kernels(self) -> str: ...  # the forward's kernel set, e.g. "torch" or "vllm"


class CachedSplit(NamedTuple):
    """A prompt as the model reads it (chat template applied), split where the prefix cache
    stopped serving it (`Backend.split_cached`)."""

    cached: str
    computed: str


class Backend(ABC):
    """Where generation goes. Implementations register a URI scheme in `sgl_lang.backends`.

    - The calls are async (all but the trace's `stats`/`split_cached`), and many may be in
      flight at once on one backend (`fork`, `run_batch`): implementations must be safe under
      concurrent calls and must not block the event loop for long (run blocking work in a
      thread or another process).
    - A request cancelled by the caller (`asyncio.CancelledError`) must release what it holds.
    - Failures are raised as `BackendError`; the interpreter adds the location.
    - Creating a backend must be cheap (`sgl check` builds one to read its capabilities):
      load models or open connections lazily, on the first call.

    The optional hooks (`warm_up`, `stats`, `split_cached`) serve `sgl run --trace`; their
    defaults do nothing, and a backend that runs an engine in this process overrides them.
    A wrapper (replay, tracing) forwards them to the backend it wraps.
    """

    name: str
    capabilities: Capabilities

    @abstractmethod
    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        """Generate a continuation of `request.prompt`. `on_chunk`, when given, receives the
        text as it is produced, in order; the pieces concatenate to exactly `result.text`
        (so no piece of a stop string is ever streamed). A `constraint` listed in
        `capabilities.constraints` must hold for `result.text`."""

    @abstractmethod
    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        """One score per choice as a continuation of `prompt`, higher = better. `method` is one
        of `capabilities.select_methods`."""

    async def cache_prefix(self, prompt: Prompt) -> None:  # noqa: B027 (optional hook)
        """A hint that several requests extending `prompt` follow (fork, batch): a backend
        with a prefix cache may compute it now. Must not change any result."""

    async def warm_up(self) -> None:  # noqa: B027 (optional hook)
        """Do now what the first call would do lazily (load the model), so that the first
        call's time is its own. Must not change any result."""

    def stats(self) -> EngineTotals | None:
        """The counters of the engine under this backend; None (the default) when there is
        none, or it is not loaded."""
        return None

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit | None:
        """`prompt` as the model reads it, split after its first `num_cached_tokens` tokens;
        None (the default) when this backend cannot tell (no tokenizer here, or not loaded)."""
        return None

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections, engines and threads. The backend is not used afterwards."""
