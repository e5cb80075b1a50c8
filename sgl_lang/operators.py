"""The language's operators and iteration rules, with its error messages."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.limits import check_int_bits, check_size
from sgl_lang.objects import check_error
from sgl_lang.values import type_name

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


def binary(op: str, left: Any, right: Any) -> Any:
    """`left op right` for the arithmetic operators `+ - * / // %`. A str or list it would
    build over the limits (`limits.py`) is refused before it is built."""
    _check_result_size(op, left, right)
    try:
        return _BINARY[op](left, right)
    except TypeError:
        raise SglTypeError(
            f"unsupported operand types for {op}: `{type_name(left)}` and `{type_name(right)}`"
        ) from None
    except (ZeroDivisionError, OverflowError) as exc:
        raise check_error(exc) from None


def compare(op: str, left: Any, right: Any) -> bool:
    """One link of a comparison chain: `== != < <= > >= in not in`."""
    try:
        return bool(_COMPARE[op](left, right))
    except TypeError:
        raise SglTypeError(
            f"`{op}` is not supported between `{type_name(left)}` and `{type_name(right)}`"
        ) from None


def _check_result_size(op: str, left: Any, right: Any) -> None:
    if op == "+" and isinstance(left, (str, list)) and type(left) is type(right):
        check_size(left, len(left) + len(right), "`+`")
    elif op == "*" and isinstance(left, int) and isinstance(right, int):
        check_int_bits(left.bit_length() + right.bit_length(), "`*`")
    elif op == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list)) and isinstance(count, int):
                check_size(seq, len(seq) * max(count, 0), "`*`")


def iterate(value: Any) -> list[Any]:
    """The items a `for` loop, a comprehension or a `fork` visits: list items, characters, dict keys."""
    if isinstance(value, (list, str)):
        return list(value)
    if isinstance(value, dict):
        return list(value.keys())
    raise SglTypeError(f"`{type_name(value)}` is not iterable")


def unpack(value: Any, count: int) -> list[Any]:
    """`a, b = value`: exactly `count` items."""
    if not isinstance(value, (list, str)) or len(value) != count:
        got = len(value) if isinstance(value, (list, str)) else type_name(value)
        raise SglValueError(f"cannot unpack {got} into {count} names")
    return list(value)
