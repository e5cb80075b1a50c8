"""The `calc` module: `evaluate(expr)`, safe arithmetic on untrusted text (for agents and tools).

A small recursive-descent evaluator — never Python's `eval`. It knows numbers,
`+ - * / // % **` with Python's precedence (`-2**2` is -4, `**` is
right-associative), parentheses, the constants `pi`, `e`, `tau`, `inf` and the
functions `sqrt abs round min max log exp floor ceil`. Anything else is a
`value error` naming what was unexpected and its 1-based column. Powers whose
integer result would exceed 1000 digits, float overflow and complex results are
refused, so an expression cannot hang the program or leave the value model.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.values import type_name

MAX_INT_DIGITS = 1000
"""The largest integer power result, in decimal digits."""

MAX_DEPTH = 50
"""How deeply parentheses, unary signs and calls may nest."""

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
}

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|//|[-+*/%(),])|(?P<bad>\S))"
)


class Token(NamedTuple):
    kind: str  # "number", "name", "op", "bad" or "end"
    text: str
    column: int  # 1-based


def _tokenize(expr: str) -> list[Token]:
    tokens = []
    for found in _TOKEN.finditer(expr):
        kind = found.lastgroup
        if kind is None:  # trailing whitespace
            continue
        tokens.append(Token(kind, found.group(kind), found.start(kind) + 1))
    tokens.append(Token("end", "", len(expr.rstrip()) + 1))
    return tokens


def _error(message: str) -> SglValueError:
    return SglValueError(f"calc: {message}")


class _Evaluator:
    """Parses and evaluates in one pass; each method consumes one grammar rule:

    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/" | "//" | "%") unary)*
    unary   := ("+" | "-") unary | power
    power   := atom ["**" unary]
    atom    := NUMBER | NAME | NAME "(" [sum ("," sum)*] ")" | "(" sum ")"
    """

    def __init__(self, expr: str) -> None:
        self.tokens = _tokenize(expr)
        self.pos = 0
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.pos]

    def take(self, text: str) -> bool:
        if self.token.kind == "op" and self.token.text == text:
            self.pos += 1
            return True
        return False

    def take_any(self, *texts: str) -> str | None:
        text = self.token.text
        return text if self.token.kind == "op" and text in texts and self.take(text) else None

    def unexpected(self) -> SglValueError:
        token = self.token
        if token.kind == "end":
            return _error(f"unexpected end of expression at {token.column}")
        if token.text == "^":
            return _error(f"unexpected `^` at {token.column} (use ** for powers)")
        return _error(f"unexpected `{token.text}` at {token.column}")

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(f"expression nested too deeply (max {MAX_DEPTH})")

    def run(self) -> Any:
        value = self.sum()
        if self.token.kind != "end":
            raise self.unexpected()
        return value

    def sum(self) -> Any:
        value = self.product()
        while op := self.take_any("+", "-"):
            value = _binary(op, value, self.product())
        return value

    def product(self) -> Any:
        value = self.unary()
        while op := self.take_any("*", "//", "/", "%"):
            value = _binary(op, value, self.unary())
        return value

    def unary(self) -> Any:
        if self.token.kind == "op" and self.token.text in "+-":
            negate = self.token.text == "-"
            self.pos += 1
            self.nest()
            value = self.unary()
            self.depth -= 1
            return -value if negate else value
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if not self.take("**"):
            return base
        self.nest()
        exponent = self.unary()
        self.depth -= 1
        return _power(base, exponent)

    def atom(self) -> Any:
        token = self.token
        if token.kind == "number":
            self.pos += 1
            if any(c in token.text for c in ".eE"):
                return float(token.text)
            if len(token.text) > MAX_INT_DIGITS:
                raise _error(f"the number at {token.column} has more than {MAX_INT_DIGITS} digits")
            return int(token.text)
        if token.kind == "name":
            self.pos += 1
            if self.take("("):
                return self.call(token)
            if token.text in CONSTANTS:
                return CONSTANTS[token.text]
            raise _error(f"unknown name `{token.text}` at {token.column}{_known()}")
        if self.take("("):
            self.nest()
            value = self.sum()
            self.depth -= 1
            if not self.take(")"):
                raise self.unexpected()
            return value
        raise self.unexpected()

    def call(self, name: Token) -> Any:
        function = FUNCTIONS.get(name.text)
        if function is None:
            raise _error(f"unknown function `{name.text}` at {name.column}{_known()}")
        self.nest()
        args = []
        if not self.take(")"):
            args.append(self.sum())
            while self.take(","):
                args.append(self.sum())
            if not self.take(")"):
                raise self.unexpected()
        self.depth -= 1
        try:
            return _check(function(*args))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _error(f"{name.text}(): {exc}") from None


def _known() -> str:
    return f" (known: {', '.join([*CONSTANTS, *FUNCTIONS])})"


def _check(value: Any) -> Any:
    if isinstance(value, complex):
        raise _error("the result is a complex number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_DIGITS * 3.33:
        raise _error(f"the result has more than {MAX_INT_DIGITS} digits")
    return value


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}


def _binary(op: str, a: Any, b: Any) -> Any:
    if op in ("/", "//", "%") and b == 0:
        raise _error("division by zero")
    try:
        return _check(_OPERATORS[op](a, b))
    except OverflowError:
        raise _error("the result is too large") from None


def _power(base: Any, exponent: Any) -> Any:
    if base == 0 and exponent < 0:
        raise _error("zero cannot be raised to a negative power")
    if base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        raise _error("a negative number cannot be raised to a fractional power")
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        num_digits = exponent * math.log10(abs(base))
        if num_digits > MAX_INT_DIGITS:
            raise _error(f"the result has more than {MAX_INT_DIGITS} digits")
    return _binary("**", base, exponent)


def evaluate(expr: str) -> int | float:
    """evaluate(expr) -> int | float: the value of an arithmetic expression such as "2 * (3 + 4) / sqrt(9)"."""
    if not isinstance(expr, str):
        raise SglTypeError(f"calc.evaluate() takes a str, not `{type_name(expr)}`")
    result: int | float = _Evaluator(expr).run()
    return result


EXPORTS = {"evaluate": evaluate}
