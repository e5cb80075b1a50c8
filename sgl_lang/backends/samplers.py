"""Random texts that satisfy a constraint, for the test backend: regex, JSON Schema and grammar
samplers."""

from __future__ import annotations

import importlib
import json
import math
import random
import re
import string
from collections.abc import Callable, Iterable
from typing import Any

from sgl_lang.protocol import (
    BackendError,
    Constraint,
    Grammar,
    JsonSchema,
    Regex,
    json_problem,
    resolve_ref,
)
from sgl_lang.user_grammars import grammar_error, grammar_parser, parse_problem

VOCAB = (
    "the a one this that model answer question fox dog cat river city light time day "
    "quick lazy small large bright quiet runs sees finds makes takes gives over under "
    "near with from into is was and but then"
).split()


def sample(constraint: Constraint, rng: random.Random) -> str:
    """A text meeting `constraint`, drawn with `rng`."""
    if isinstance(constraint, Regex):
        return sample_regex(constraint.pattern, rng)
    if isinstance(constraint, JsonSchema):
        return json.dumps(sample_json(constraint.schema, rng))
    if isinstance(constraint, Grammar):
        return sample_grammar(constraint.source, rng)
    if not constraint.options:
        raise BackendError("`choices` needs at least one option")
    return rng.choice(constraint.options)


# ---------------------------------------------------------------- regex

_PARSER: Any = importlib.import_module("re._parser")  # no typeshed stubs
_PRINTABLE = [chr(code) for code in range(32, 127)]
_CATEGORIES = {  # name -> (what we emit, what it matches)
    "CATEGORY_DIGIT": (string.digits, r"\d"),
    "CATEGORY_NOT_DIGIT": (string.ascii_letters, r"\D"),
    "CATEGORY_SPACE": (" ", r"\s"),
    "CATEGORY_NOT_SPACE": (string.ascii_letters + string.digits, r"\S"),
    "CATEGORY_WORD": (string.ascii_letters + string.digits + "_", r"\w"),
    "CATEGORY_NOT_WORD": (" .,-!?", r"\W"),
}
_MAX_EXTRA_REPEATS = 3
_MAX_ATTEMPTS = 50


def sample_regex(pattern: str, rng: random.Random) -> str:
    """A string that `re.fullmatch`es `pattern`, walking its parse tree with `rng`. Unbounded
    repeats run a few times past their minimum; anchors and lookarounds are skipped and the
    result checked (retrying); backreferences are refused."""
    try:
        parsed = _PARSER.parse(pattern)
    except re.error as exc:
        raise BackendError(f"invalid regex {pattern!r}: {exc}") from None
    for _ in range(_MAX_ATTEMPTS):
        text = _RegexSampler(rng).sequence(parsed)
        if re.fullmatch(pattern, text):
            return text
    raise BackendError(f"test backend could not sample a match for regex {pattern!r}")


class _RegexSampler:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def sequence(self, items: Iterable[tuple[Any, Any]]) -> str:
        return "".join(self.item(str(op), arg) for op, arg in items)

    def item(self, op: str, arg: Any) -> str:
        rng = self.rng
        if op == "LITERAL":
            return chr(arg)
        if op == "NOT_LITERAL":
            return self.pick(lambda char: ord(char) != arg)
        if op == "ANY":
            return rng.choice(string.ascii_letters + string.digits + " ")
        if op == "IN":
            return self.in_set(arg)
        if op == "BRANCH":
            return self.sequence(rng.choice(arg[1]))
        if op == "SUBPATTERN":
            return self.sequence(arg[3])
        if op == "ATOMIC_GROUP":
            return self.sequence(arg)
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = arg
            high = low + _MAX_EXTRA_REPEATS if high == _PARSER.MAXREPEAT else high
            count = rng.randint(low, min(high, low + _MAX_EXTRA_REPEATS))
            return "".join(self.sequence(body) for _ in range(count))
        if op in ("AT", "ASSERT", "ASSERT_NOT"):
            return ""
        if op in ("GROUPREF", "GROUPREF_EXISTS"):
            raise BackendError("test backend cannot sample from regex with backreferences")
        raise BackendError(f"test backend cannot sample regex element {op}")

    def in_set(self, items: list[tuple[Any, Any]]) -> str:
        if items and str(items[0][0]) == "NEGATE":
            return self.pick(lambda char: not _in_set(items[1:], char))
        op, arg = self.rng.choice(items)
        if str(op) == "LITERAL":
            return chr(arg)
        if str(op) == "RANGE":
            return chr(self.rng.randint(*arg))
        return self.rng.choice(_CATEGORIES[str(arg)][0])

    def pick(self, allowed: Callable[[str], bool]) -> str:
        candidates = [char for char in _PRINTABLE if allowed(char)]
        candidates = candidates or [char for char in "\t\n\r\xe9\u03bb\u4e2d" if allowed(char)]
        if not candidates:
            raise BackendError("test backend cannot find a character for a regex class")
        return self.rng.choice(candidates)


def _in_set(items: list[tuple[Any, Any]], char: str) -> bool:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL" and ord(char) == arg:
            return True
        if name == "RANGE" and arg[0] <= ord(char) <= arg[1]:
            return True
        if name == "CATEGORY" and re.fullmatch(_CATEGORIES[str(arg)][1], char):
            return True
    return False


# ---------------------------------------------------------------- grammar

_GRAMMAR_DEPTH = 6  # past this depth every rule takes its shortest way to terminals


def sample_grammar(source: str, rng: random.Random) -> str:
    """A string that parses in full with the Lark grammar `source`: a random derivation from
    `start` whose terminals are drawn as regexes; checked by parsing it (retrying)."""
    if problem := grammar_error(source):
        raise BackendError(f"invalid grammar: {problem}")
    parser = grammar_parser(source)
    expansions: dict[str, list[list[Any]]] = {}
    for rule in parser.rules:
        expansions.setdefault(rule.origin.name, []).append(list(rule.expansion))
    patterns = {term.name: term.pattern.to_regexp() for term in parser.terminals}
    heights = _rule_heights(expansions)
    for _ in range(_MAX_ATTEMPTS):
        text = _derive("start", expansions, patterns, heights, rng, 0)
        if parse_problem(source, text) is None:
            return text
    raise BackendError("test backend could not sample a string of the grammar")


def _derive(
    name: str,
    expansions: dict[str, list[list[Any]]],
    patterns: dict[str, str],
    heights: dict[str, int],
    rng: random.Random,
    depth: int,
) -> str:
    options = expansions[name]
    if depth >= _GRAMMAR_DEPTH:
        options = [min(options, key=lambda symbols: _height(symbols, heights))]
    parts = []
    for symbol in rng.choice(options):
        if symbol.is_term:
            parts.append(sample_regex(patterns[symbol.name], rng))
        else:
            parts.append(_derive(symbol.name, expansions, patterns, heights, rng, depth + 1))
    return "".join(parts)


def _rule_heights(expansions: dict[str, list[list[Any]]]) -> dict[str, int]:
    """Each rule's least derivation height (a fixpoint; unreachable-to-terminals: huge)."""
    heights = dict.fromkeys(expansions, math.inf)
    changed = True
    while changed:
        changed = False
        for name, options in expansions.items():
            best = min(_height(symbols, heights) for symbols in options)
            if best < heights[name]:
                heights[name], changed = best, True
    return {name: int(min(height, 10**6)) for name, height in heights.items()}


def _height(symbols: list[Any], heights: dict[str, Any]) -> float:
    return 1 + max((heights[s.name] for s in symbols if not s.is_term), default=0)


# ---------------------------------------------------------------- JSON Schema

_MAX_DEPTH = 24  # recursion through $ref past this is an error
_SHALLOW_DEPTH = 4  # past this, optional properties are left out and arrays kept minimal


def sample_json(schema: dict, rng: random.Random) -> Any:
    """A value valid for `schema`. Supports type (or a list of types), enum, const,
    properties/required/additionalProperties, items/minItems/maxItems, string
    minLength/maxLength/pattern, number bounds, anyOf/oneOf/allOf and local `$ref`s."""
    return _JsonSampler(schema, rng).value(schema, 0)


class _JsonSampler:
    def __init__(self, root: dict, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def value(self, schema: dict, depth: int) -> Any:
        rng = self.rng
        if depth > _MAX_DEPTH:
            raise BackendError("test backend: the JSON schema nests too deeply (recursive $ref?)")
        schema = resolve_ref(schema, self.root)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.value(rng.choice(schema[key]), depth + 1)
        if "allOf" in schema:
            return self.value(_merge(schema, self.root), depth + 1)
        kind = schema.get("type", _implied_type(schema))
        kind = rng.choice(kind) if isinstance(kind, list) else kind
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            low = schema.get("minItems", 0)
            high = min(schema.get("maxItems", low + 3), low + (0 if depth > _SHALLOW_DEPTH else 3))
            item = schema.get("items", {})
            return [self.value(item, depth + 1) for _ in range(rng.randint(low, high))]
        if kind == "string":
            return self.string(schema)
        if kind in ("integer", "number"):
            return self.number(schema, kind)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        raise BackendError(f"test backend cannot sample JSON schema type {kind!r}")

    def object(self, schema: dict, depth: int) -> dict:
        required = set(schema.get("required", ()))
        result = {}
        for name, sub in schema.get("properties", {}).items():
            keep = name in required or (depth <= _SHALLOW_DEPTH and self.rng.random() < 0.5)
            if keep:
                result[name] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            for key in self.rng.sample(VOCAB, self.rng.randint(0, 2)):
                result[key] = self.value(extra, depth + 1)
        return result

    def string(self, schema: dict) -> str:
        if "pattern" in schema:
            return sample_regex(schema["pattern"], self.rng)
        text = " ".join(self.rng.choices(VOCAB, k=self.rng.randint(1, 3)))
        text = text.ljust(schema.get("minLength", 0), "x")
        return text[: schema.get("maxLength", len(text))]

    def number(self, schema: dict, kind: str) -> int | float:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        low = (0 if high is None else min(0, high - 100)) if low is None else low
        high = low + 100 if high is None else high
        for _ in range(_MAX_ATTEMPTS):
            if kind == "integer" and math.ceil(low) <= math.floor(high):
                value: int | float = self.rng.randint(math.ceil(low), math.floor(high))
            else:
                value = round(self.rng.uniform(low, high), 2)
            if json_problem(value, schema) is None:
                return value
        raise BackendError(f"test backend cannot sample a {kind} for the schema {schema!r}")


def _merge(schema: dict, root: dict) -> dict:
    """`allOf` flattened into one schema (properties and required combined)."""
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    for part in schema["allOf"]:
        part = resolve_ref(part, root)
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _implied_type(schema: dict) -> str:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    return "array" if "items" in schema else "string"
