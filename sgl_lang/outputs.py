"""A `gen`'s output checked against its constraint and turned into the value it binds."""

from __future__ import annotations

import json
import re
from typing import Any

from sgl_lang.errors import SglConstraintError, SglValueError
from sgl_lang.gen_args import GenArgs
from sgl_lang.protocol import (
    TYPE_PATTERNS,
    BackendError,
    Choices,
    Constraint,
    JsonSchema,
)
from sgl_lang.user_grammars import output_problem
from sgl_lang.values import to_repr

_ANY_JSON = JsonSchema({})


def output_value(text: str, args: GenArgs, *, enforced: bool) -> Any:
    """The value a `gen` binds for its output `text`. A constraint the backend `enforced` is
    trusted: the output is only converted (JSON parsed, a choice looked up); one it did not is
    checked in full (`constraint_problem`). Raises `SglConstraintError` saying why `text` does
    not comply."""
    constraint = args.request.constraint
    if args.type_name:
        return convert_type(text, args.type_name)
    checked = _conversion_check(constraint) if enforced else constraint
    try:
        problem = output_problem(checked, text, to_repr)
    except BackendError as exc:  # a schema the checker cannot read
        raise SglValueError(f"cannot check the output: {exc}") from None
    if problem:
        raise SglConstraintError(problem)
    return json.loads(text) if isinstance(constraint, JsonSchema) else text


def _conversion_check(constraint: Constraint | None) -> Constraint | None:
    """What is still checked of an enforced constraint: that JSON parses, that a choice is one."""
    if isinstance(constraint, JsonSchema):
        return _ANY_JSON
    return constraint if isinstance(constraint, Choices) else None


def convert_type(text: str, name: str) -> Any:
    """The value of a `type=` gen's output (surrounding whitespace allowed)."""
    stripped = text.strip()
    if re.fullmatch(TYPE_PATTERNS[name], stripped) is None:
        raise SglConstraintError(f"the output {to_repr(text)} is not a valid {name}")
    if name == "bool":
        return stripped == "true"
    return int(stripped) if name == "int" else float(stripped)
