"""What an output must satisfy: a regex, a JSON Schema, one of a list of choices, or a grammar."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class Grammar:
    """The output must parse in full with `source`, a context-free grammar in Lark syntax
    whose start rule is `start` (docs/language.md)."""

    source: str


Constraint = Regex | JsonSchema | Choices | Grammar

# Patterns for `gen x(type=...)`: what a model writes and Python's int()/float() parse.
# `bool` accepts only the JSON spellings `true` and `false` (not Python's `True`/`False`).
TYPE_PATTERNS: dict[str, str] = {
    "int": r"-?(0|[1-9][0-9]*)",
    "float": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?",
    "bool": r"(true|false)",
}

CONSTRAINT_KINDS = frozenset({"regex", "json", "choices", "grammar"})
CONSTRAINT_KIND: dict[type, str] = {
    Regex: "regex",
    JsonSchema: "json",
    Choices: "choices",
    Grammar: "grammar",
}
