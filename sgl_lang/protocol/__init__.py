"""The protocol between the language and the places generation goes: prompts, constraints
and the check of an output against one, requests and results, capabilities, the `Backend`
contract, `select` scoring. It imports no other part of sgl-lang, and neither torch nor lark."""

from sgl_lang.protocol.backend import (
    GEN_OPTIONS,
    Backend,
    BackendError,
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
from sgl_lang.protocol.prompts import Image, Message, Prompt, Segment, Text
from sgl_lang.protocol.reasoning import split_reasoning, with_reasoning
from sgl_lang.protocol.requests import GenRequest, GenResult, TokenLogprob
from sgl_lang.protocol.scoring import SELECT_METHODS, choice_scores

__all__ = [
    "CONSTRAINT_KIND",
    "CONSTRAINT_KINDS",
    "GEN_OPTIONS",
    "SELECT_METHODS",
    "TYPE_PATTERNS",
    "Backend",
    "BackendError",
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
    "Prompt",
    "Regex",
    "Segment",
    "Text",
    "TokenLogprob",
    "choice_scores",
    "constraint_problem",
    "json_problem",
    "resolve_ref",
    "split_reasoning",
    "with_reasoning",
]
