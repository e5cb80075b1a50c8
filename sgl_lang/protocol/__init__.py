"""The protocol between the language and the places generation goes: prompts, constraints
and the check of an output against one, requests and results, capabilities, the `Backend`
contract, `select` scoring. It imports no other part of sgl-lang, and neither torch nor lark."""

from sgl_lang.protocol.backend import (
    GEN_OPTIONS,
    Backend,
    BackendError,
    BackendUnavailable,
    CachedSplit,
    Capabilities,
    EngineTotals,
)
from sgl_lang.protocol.checks import constraint_problem
from sgl_lang.protocol.constraints import (
    CONSTRAINT_KIND,
    CONSTRAINT_KINDS,
    TYPE_PATTERNS,
    Choices,
    Constraint,
    Grammar,
    JsonSchema,
    Regex,
)
from sgl_lang.protocol.json_schema import json_problem, resolve_ref
from sgl_lang.protocol.prompts import Image, Message, Part, Prompt, Segment, Text
from sgl_lang.protocol.reasoning import split_reasoning, with_reasoning
from sgl_lang.protocol.requests import GenRequest, GenResult, TokenLogprob
from sgl_lang.protocol.scoring import SELECT_METHODS, choice_scores
from sgl_lang.protocol.tools import (
    TOOL_CHOICES,
    ToolCall,
    ToolOutput,
    ToolResult,
    ToolSpec,
    read_tool_output,
    tool_output_schema,
    tools_instruction,
)

__all__ = [
    "CONSTRAINT_KIND",
    "CONSTRAINT_KINDS",
    "GEN_OPTIONS",
    "SELECT_METHODS",
    "TOOL_CHOICES",
    "TYPE_PATTERNS",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "CachedSplit",
    "Capabilities",
    "Choices",
    "Constraint",
    "EngineTotals",
    "GenRequest",
    "GenResult",
    "Grammar",
    "Image",
    "JsonSchema",
    "Message",
    "Part",
    "Prompt",
    "Regex",
    "Segment",
    "Text",
    "TokenLogprob",
    "ToolCall",
    "ToolOutput",
    "ToolResult",
    "ToolSpec",
    "choice_scores",
    "constraint_problem",
    "json_problem",
    "read_tool_output",
    "resolve_ref",
    "split_reasoning",
    "tool_output_schema",
    "tools_instruction",
    "with_reasoning",
]
