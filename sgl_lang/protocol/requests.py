"""One generation as a backend receives it, and its result."""

from __future__ import annotations

from dataclasses import dataclass

from sgl_lang.protocol.constraints import Constraint
from sgl_lang.protocol.prompts import Prompt
from sgl_lang.protocol.tools import ToolCall, ToolSpec


@dataclass(frozen=True)
class GenRequest:
    """One generation. Sampling is greedy at `temperature=0`; `top_k=0` means no top-k;
    `stop` strings end generation and are excluded from the result. `tools` are offered to
    the model, which calls one or answers as `tool_choice` ("auto", "required", "none")
    allows; no `constraint` goes with tools."""

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


@dataclass(frozen=True)
class GenResult:
    """A finished generation. `text` excludes the stop string; `finish_reason` is "stop"
    (a stop string), "length" (`max_tokens`), "eos" (the model ended its turn) or
    "tool_calls" (the model called `tool_calls` instead of answering; `text` is what it wrote
    besides, often nothing)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
