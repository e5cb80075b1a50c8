"""One generation as a backend receives it, and its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sgl_lang.protocol.constraints import Constraint
from sgl_lang.protocol.prompts import Prompt
from sgl_lang.protocol.tools import ToolCall, ToolSpec


@dataclass(frozen=True)
class GenRequest:
    """One generation. Sampling is greedy at `temperature=0`; `top_k=0` means no top-k;
    `stop` strings end generation and are excluded from the result (kept with
    `include_stop`); `stop_regex` ends it where the text generated so far has a match of the
    regex, excluded the same way. The end of the model's turn (and its stop tokens) cannot
    come before `min_tokens` tokens. `logprobs` (K >= 0, None: off) asks for each generated
    token's log-prob and its K most likely alternatives (`GenResult.logprobs`); `reasoning`
    asks for the model's reasoning apart from its answer (`GenResult.reasoning`), with at most
    `reasoning_budget` tokens of it where the provider takes a budget (None: its default).
    `tools` are offered to the model, which calls one or answers as `tool_choice` ("auto",
    "required", "none") allows; no `constraint` goes with tools."""

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
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    min_tokens: int = 0
    stop_regex: str | None = None
    include_stop: bool = False
    logprobs: int | None = None
    reasoning: bool = False
    reasoning_budget: int | None = None

    @property
    def options(self) -> frozenset[str]:
        """The optional features this request uses (`Capabilities.gen_options`)."""
        used = {
            "min_tokens": self.min_tokens > 0,
            "stop_regex": self.stop_regex is not None,
            "include_stop": self.include_stop,
            "logprobs": self.logprobs is not None,
            "reasoning": self.reasoning,
        }
        return frozenset(name for name, is_used in used.items() if is_used)


class TokenLogprob(NamedTuple):
    """One generated token: its text, its log-prob, and the most likely tokens at its step
    as (text, log-prob), most likely first."""

    text: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenResult:
    """A finished generation. `text` excludes the stop string (unless `include_stop`);
    `finish_reason` is "stop" (a stop string or regex), "length" (`max_tokens`), "eos" (the
    model ended its turn) or "tool_calls" (the model called `tool_calls` instead of
    answering; `text` is what it wrote besides, often nothing). `logprobs` has one entry per
    generated token when the request asked for them; `reasoning` is the model's reasoning
    when asked for and there was some (`text` is then the answer alone)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
