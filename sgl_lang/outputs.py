"""A `gen`'s output checked against its constraint and turned into the value it binds."""

from __future__ import annotations

import json
import re
from typing import Any

from sgl_lang.backends.json_schema import json_problem
from sgl_lang.errors import SglConstraintError
from sgl_lang.gen_args import GenArgs
from sgl_lang.protocol import TYPE_PATTERNS, Choices, Constraint, JsonSchema, Regex
from sgl_lang.values import to_repr


def satisfies(constraint: Constraint | None, text: str) -> bool:
    """Whether `text` is a complete output for `constraint` (always, without one)."""
    if isinstance(constraint, Regex):
        return re.fullmatch(constraint.pattern, text.strip()) is not None
    if isinstance(constraint, Choices):
        return text in constraint.options
    if isinstance(constraint, JsonSchema):
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return False
    return True


def output_value(text: str, args: GenArgs, *, enforced: bool) -> Any:
    """The value a `gen` binds for its output `text`. A constraint the backend `enforced` is
    trusted (the output is only converted); one it did not is checked in full: the regex
    matches all of `text`, the JSON is valid for the schema. Raises `SglConstraintError`
    saying why `text` does not comply."""
    constraint = args.request.constraint
    if args.type_name:
        return convert_type(text, args.type_name)
    if isinstance(constraint, Choices) and text not in constraint.options:
        raise SglConstraintError(f"the output {to_repr(text)} is not one of the choices")
    if (
        isinstance(constraint, Regex)
        and not enforced
        and not re.fullmatch(constraint.pattern, text)
    ):
        pattern = to_repr(constraint.pattern)
        raise SglConstraintError(f"the output {to_repr(text)} does not match the regex {pattern}")
    if isinstance(constraint, JsonSchema):
        return _json_value(text, None if enforced else constraint.schema)
    return text


def _json_value(text: str, schema: dict | None) -> Any:
    """The JSON value of `text`, checked against `schema` when one is given."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SglConstraintError(f"the output {to_repr(text)} is not valid JSON: {exc}") from None
    problem = None if schema is None else json_problem(value, schema)
    if problem:
        raise SglConstraintError(f"the output does not fit the JSON schema: {problem}")
    return value


def convert_type(text: str, name: str) -> Any:
    """The value of a `type=` gen's output (surrounding whitespace allowed)."""
    stripped = text.strip()
    if re.fullmatch(TYPE_PATTERNS[name], stripped) is None:
        raise SglConstraintError(f"the output {to_repr(text)} is not a valid {name}")
    if name == "bool":
        return stripped == "true"
    return int(stripped) if name == "int" else float(stripped)
