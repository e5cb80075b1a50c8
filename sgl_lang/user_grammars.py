"""The grammars of `gen … grammar=` (Lark syntax): checking one, and parsing an output with it.
The language checks grammars and outputs with it; the test backend draws outputs from them (the
protocol, which imports no lark, checks every other constraint)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import lark

from sgl_lang.protocol import Constraint, Grammar, constraint_problem

MAX_CACHED_GRAMMARS = 64


@functools.lru_cache(maxsize=MAX_CACHED_GRAMMARS)
def grammar_parser(source: str) -> lark.Lark:
    """The Earley parser of `source` (start rule `start`); raises `lark.LarkError`."""
    return lark.Lark(source, start="start", parser="earley", keep_all_tokens=True)


def grammar_error(source: str) -> str | None:
    """Why `source` is not a usable grammar; None when it is."""
    try:
        grammar_parser(source)
    except lark.LarkError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def parse_problem(source: str, text: str, quote: Callable[[str], str] = repr) -> str | None:
    """Why `text` does not parse in full with the (valid) grammar `source`; None when it does."""
    try:
        grammar_parser(source).parse(text)
    except lark.UnexpectedEOF:
        return f"the output {quote(text)} ends before the grammar allows it to"
    except lark.UnexpectedInput as exc:
        position = exc.pos_in_stream
        where = (
            f"at character {position}" if position is not None and position >= 0 else "at its end"
        )
        return f"the output {quote(text)} does not parse with the grammar ({where})"
    return None


def output_problem(
    constraint: Constraint | None, text: str, quote: Callable[[str], str] = repr
) -> str | None:
    """`constraint_problem`, grammars included: why `text` does not satisfy `constraint`."""
    if isinstance(constraint, Grammar):
        return parse_problem(constraint.source, text, quote)
    return constraint_problem(constraint, text, quote)
