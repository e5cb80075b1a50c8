"""Whether an output satisfies its constraint: the one definition the language and the backends share."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from sgl_lang.protocol.constraints import Choices, Constraint, JsonSchema, Regex
from sgl_lang.protocol.json_schema import json_problem


def constraint_problem(
    constraint: Constraint | None, text: str, quote: Callable[[str], str] = repr
) -> str | None:
    """Why the output `text` does not satisfy `constraint`, as a sentence about "the output"
    with strings written by `quote`; None when it does (always, without a constraint).

    A `Regex` matches all of `text` (`re.fullmatch`, whitespace included), `Choices` contain it
    exactly, a `JsonSchema` parses as JSON valid for the schema (`json_problem`)."""
    if isinstance(constraint, Regex) and re.fullmatch(constraint.pattern, text) is None:
        return f"the output {quote(text)} does not match the regex {quote(constraint.pattern)}"
    if isinstance(constraint, Choices) and text not in constraint.options:
        return f"the output {quote(text)} is not one of the choices"
    if not isinstance(constraint, JsonSchema):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the output {quote(text)} is not valid JSON: {exc}"
    problem = json_problem(value, constraint.schema)
    return f"the output does not fit the JSON schema: {problem}" if problem else None
