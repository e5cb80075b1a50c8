"""The backend contract: prompts, generation requests and results, and the `Backend` ABC."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Text:
    """Free text, sent to the model as is (completion style)."""

    text: str


@dataclass(frozen=True)
class Message:
    """A chat message; `role` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class Image:
    """An image: a file path, an URL, or the raw bytes."""

    source: str | bytes


Segment = Text | Message | Image


@dataclass(frozen=True)
class Prompt:
    """What the program has built so far, in order.

    When `open_role` is set, the prompt ends inside a message of that role which is still
    open: generation continues its content, with no end-of-turn after it. If the last segment
    is not a `Message` of that role, the prompt ends with an empty open message of that role.
    """

    segments: tuple[Segment, ...]
    open_role: str | None = None

    @property
    def is_chat(self) -> bool:
        return any(isinstance(segment, Message) for segment in self.segments)

    def plain_text(self) -> str:
        """The fallback rendering: text as is, messages as `Role: content` lines (the open
        message without its newline), images as `<image>`."""
        parts: list[str] = []
        for segment in self.segments:
            if isinstance(segment, Text):
                parts.append(segment.text)
            elif isinstance(segment, Message):
                parts.append(f"{segment.role.capitalize()}: {segment.content}\n")
            else:
                parts.append("<image>")
        if self.open_role is not None:
            last = self.segments[-1] if self.segments else None
            if isinstance(last, Message) and last.role == self.open_role:
                parts[-1] = parts[-1].removesuffix("\n")
            else:
                parts.append(f"{self.open_role.capitalize()}: ")
        return "".join(parts)


# ---------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Regex:
    """The output must match `pattern` in full (`re.fullmatch`)."""

    pattern: str


@dataclass(frozen=True)
class JsonSchema:
    """The output must be JSON text valid for `schema`, a JSON Schema dict."""

    schema: dict


@dataclass(frozen=True)
class Choices:
    """The output must be exactly one of `options`."""

    options: tuple[str, ...]


Constraint = Regex | JsonSchema | Choices

# Patterns for `gen x(type=...)`: what a model writes and Python's int()/float() parse.
# `bool` accepts only the JSON spellings `true` and `false` (not Python's `True`/`False`).
TYPE_PATTERNS: dict[str, str] = {
    "int": r"-?(0|[1-9][0-9]*)",
    "float": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?",
    "bool": r"(true|false)",
}

CONSTRAINT_KINDS = frozenset({"regex", "json", "choices"})
CONSTRAINT_KIND: dict[type, str] = {Regex: "regex", JsonSchema: "json", Choices: "choices"}
SELECT_METHODS = frozenset({"normalized", "greedy", "unconditional"})

# ---------------------------------------------------------------- requests and results


@dataclass(frozen=True)
class GenRequest:
    """One generation. Sampling is greedy at `temperature=0`; `top_k=0` means no top-k;
    `stop` strings end generation and are excluded from the result."""

    prompt: Prompt
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False
    heal: bool = True
    constraint: Constraint | None = None


@dataclass(frozen=True)
class GenResult:
    """A finished generation. `text` excludes the stop string; `finish_reason` is "stop"
    (a stop string), "length" (`max_tokens`) or "eos" (the model ended its turn)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Capabilities:
    """What a backend enforces. `constraints` ⊆ {"regex", "json", "choices"} are enforced
    while decoding (others are checked after the fact by the interpreter); `select_methods`
    ⊆ {"normalized", "greedy", "unconditional"} can be scored (empty: `select` falls back
    to `gen choices=`); `images` says whether `Image` segments reach the model."""

    constraints: frozenset[str]
    select_methods: frozenset[str]
    images: bool = False

    def enforces(self, constraint: Constraint | None) -> bool:
        """Whether every output meets `constraint` (None: there is none to meet)."""
        return constraint is None or CONSTRAINT_KIND[type(constraint)] in self.constraints


# ---------------------------------------------------------------- the backend


class Backend(ABC):
    """Where generation goes. Implementations register a URI scheme in `sgl_lang.backends`.

    - Every method is async, and many calls may be in flight at once on one backend (`fork`,
      `run_batch`): implementations must be safe under concurrent calls and must not block
      the event loop for long (run blocking work in a thread or another process).
    - A request cancelled by the caller (`asyncio.CancelledError`) must release what it holds.
    - Failures are raised as `SglBackendError` without a span; the interpreter adds it.
    - Creating a backend must be cheap (`sgl check` builds one to read its capabilities):
      load models or open connections lazily, on the first call.
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

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections, engines and threads. The backend is not used afterwards."""
