"""JSON Schema validation: whether a value is valid for the schema of a `json=` constraint.

Covers what `schema` declarations produce and what the test backend samples: type (or a list
of types), enum, const, properties/required/additionalProperties, items/minItems/maxItems,
string minLength/maxLength/pattern, number bounds, anyOf/oneOf/allOf and local `$ref`s. A
schema it cannot read (a `$ref` outside the document, an unknown type) raises `BackendError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sgl_lang.protocol.backend import BackendError

_MAX_REFS = 24  # a chain of $refs longer than this refers to itself


def resolve_ref(schema: dict, root: dict) -> dict:
    """Follow `$ref`s of the form `#/a/b` within `root`."""
    seen = 0
    while "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise BackendError(f"only local JSON schema $refs (`#/...`) are supported, not {ref!r}")
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise BackendError(f"JSON schema $ref {ref!r} does not resolve")
            target = target[part]
        schema, seen = target, seen + 1
        if seen > _MAX_REFS:
            raise BackendError(f"JSON schema $ref {ref!r} refers to itself")
    return schema


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _type_check(kind: str) -> Callable[[Any], bool]:
    if kind not in _JSON_TYPES:
        raise BackendError(f"unknown JSON schema type {kind!r}")
    return _JSON_TYPES[kind]


def json_problem(value: Any, schema: dict, root: dict | None = None, path: str = "$") -> str | None:
    """Why `value` is not valid for `schema`, or None; `path` names the part checked."""
    root = schema if root is None else root
    schema = resolve_ref(schema, root)
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']!r}"
    for key in ("anyOf", "oneOf"):
        if key in schema and all(json_problem(value, s, root, path) for s in schema[key]):
            return f"{path}: matches no alternative of {key}"
    for sub in schema.get("allOf", ()):
        if problem := json_problem(value, sub, root, path):
            return problem
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds is not None and not any(_type_check(kind)(value) for kind in kinds):
        return f"{path}: {value!r} is not of type {'/'.join(kinds)}"
    if isinstance(value, dict):
        return _object_problem(value, schema, root, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get(
            "maxItems", len(value)
        ):
            return f"{path}: {len(value)} items is out of bounds"
        for index, item in enumerate(value):
            if problem := json_problem(item, schema.get("items", {}), root, f"{path}[{index}]"):
                return problem
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return f"{path}: length {len(value)} is out of bounds"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{path}: {value!r} does not match {schema['pattern']!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        bounds = [
            ("minimum", lambda b: value >= b),
            ("maximum", lambda b: value <= b),
            ("exclusiveMinimum", lambda b: value > b),
            ("exclusiveMaximum", lambda b: value < b),
        ]
        for key, ok in bounds:
            if key in schema and not ok(schema[key]):
                return f"{path}: {value!r} breaks {key} {schema[key]!r}"
    return None


def _object_problem(value: dict, schema: dict, root: dict, path: str) -> str | None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            return f"{path}: missing required property {name!r}"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        sub = properties.get(name, extra)
        if sub is False:
            return f"{path}: unexpected property {name!r}"
        if isinstance(sub, dict) and (problem := json_problem(item, sub, root, f"{path}.{name}")):
            return problem
    return None
