"""The always-in-scope built-in functions, in one table: `BUILTINS`."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TextIO

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.limits import check_num_items, check_size, check_text_len
from sgl_lang.values import to_str, type_name

output: ContextVar[TextIO | None] = ContextVar("sgl_output", default=None)
"""Where `print` writes; `None` means the process's current `sys.stdout`."""

_NOTHING: Any = object()  # marks an argument that was not given


def _items(value: Any, function: str) -> list[Any]:
    """The items of an iterable value: a list's items, a str's characters, a dict's keys."""
    if isinstance(value, (list, str, dict)):
        return list(value)
    raise SglTypeError(f"{function}() needs a list, str or dict, not `{type_name(value)}`")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


async def _keys(items: list[Any], key: Any, function: str) -> list[Any]:
    """Apply a key function (a Python callable or a wrapped, async language function) to each item."""
    if key is None:
        return items
    if not callable(key):
        raise SglTypeError(f"{function}() key must be a function, not `{type_name(key)}`")
    keys = []
    for item in items:
        result = key(item)
        keys.append(await result if inspect.isawaitable(result) else result)
    return keys


def _compare_error(function: str, keys: list[Any]) -> SglTypeError:
    kinds = sorted({type_name(k) for k in keys})
    return SglTypeError(f"{function}() cannot compare `{'` and `'.join(kinds)}` values")


# ---------------------------------------------------------------- conversions


def len_(value: Any) -> int:
    """len(x) -> int: the number of characters of a str, items of a list, or keys of a dict."""
    if isinstance(value, (str, list, dict)):
        return len(value)
    raise SglTypeError(f"len() takes a str, list or dict, not `{type_name(value)}`")


def str_(value: Any = "") -> str:
    """str(x) -> str: `x` as text; non-strings in literal syntax (`true`, `none`, `[1, "a"]`)."""
    return to_str(value)


def int_(value: Any = 0, base: Any = _NOTHING) -> int:
    """int(x, base=10) -> int: a number truncated toward zero, or a str parsed as an integer."""
    if base is not _NOTHING:
        if not isinstance(value, str):
            raise SglTypeError(f"int() with a base needs a str, not `{type_name(value)}`")
        if not isinstance(base, int) or isinstance(base, bool):
            raise SglTypeError(f"int() base must be an int, not `{type_name(base)}`")
        if base != 0 and not 2 <= base <= 36:
            raise SglValueError("int() base must be 0 or between 2 and 36")
    if isinstance(value, str):
        try:
            return int(value, 10 if base is _NOTHING else base)
        except ValueError as exc:
            if not str(exc).startswith("invalid literal"):  # too many digits
                raise SglValueError(f"int(): {exc}") from None
            raise SglValueError(f"invalid literal for int(): {value!r}") from None
    if _is_number(value):
        try:
            return int(value)
        except (ValueError, OverflowError) as exc:
            raise SglValueError(f"int(): {exc}") from None
    raise SglTypeError(f"int() takes a str, int, float or bool, not `{type_name(value)}`")


def float_(value: Any = 0.0) -> float:
    """float(x) -> float: a number as a float, or a str parsed as one ("1.5", "1e-3", "inf")."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise SglValueError(f"invalid literal for float(): {value!r}") from None
    if _is_number(value):
        try:
            return float(value)
        except OverflowError as exc:
            raise SglValueError(f"float(): {exc}") from None
    raise SglTypeError(f"float() takes a str, int, float or bool, not `{type_name(value)}`")


def bool_(value: Any = False) -> bool:
    """bool(x) -> bool: the truth of `x`: false for 0, "", [], {}, none and false."""
    return bool(value)


def list_(value: Any = _NOTHING) -> list[Any]:
    """list(x) -> list: a copy of a list, the characters of a str, or the keys of a dict."""
    return [] if value is _NOTHING else _items(value, "list")


def dict_(value: Any = _NOTHING, **entries: Any) -> dict[Any, Any]:
    """dict(x, **entries) -> dict: a copy of a dict, or a dict from a list of [key, value] pairs."""
    result: dict[Any, Any] = {}
    if isinstance(value, dict):
        result.update(value)
    elif isinstance(value, list):
        for pair in value:
            if not isinstance(pair, list) or len(pair) != 2:
                raise SglTypeError(f"dict() needs [key, value] pairs; found {to_str(pair)}")
            _hashable(pair[0], "dict")
            result[pair[0]] = pair[1]
    elif value is not _NOTHING:
        raise SglTypeError(f"dict() takes a dict or a list of pairs, not `{type_name(value)}`")
    result.update(entries)
    return result


def _hashable(key: Any, function: str) -> None:
    if isinstance(key, (list, dict)):
        raise SglTypeError(f"{function}(): a `{type_name(key)}` cannot be a dict key")


# ---------------------------------------------------------------- sequences


def range_(*args: Any) -> list[int]:
    """range(stop) / range(start, stop, step=1) -> list[int]: the integers from start up to stop."""
    if not 1 <= len(args) <= 3:
        raise SglTypeError(f"range() takes 1 to 3 arguments, got {len(args)}")
    for arg in args:
        if not isinstance(arg, int) or isinstance(arg, bool):
            raise SglTypeError(f"range() takes ints, not `{type_name(arg)}`")
    try:
        numbers = range(*args)
    except ValueError as exc:
        raise SglValueError(f"range(): {exc}") from None
    check_num_items(len(numbers), "range()")
    return list(numbers)


def reversed_(value: Any) -> list[Any]:
    """reversed(x) -> list: the items of a list (or characters of a str) in reverse order."""
    return _items(value, "reversed")[::-1]


def enumerate_(value: Any, start: Any = 0) -> list[list[Any]]:
    """enumerate(xs, start=0) -> list: `[index, item]` pairs, counting from `start`."""
    if not isinstance(start, int) or isinstance(start, bool):
        raise SglTypeError(f"enumerate() start must be an int, not `{type_name(start)}`")
    return [[i, item] for i, item in enumerate(_items(value, "enumerate"), start)]


def zip_(*values: Any, strict: bool = False) -> list[list[Any]]:
    """zip(*lists, strict=false) -> list: lists of the i-th items; stops at the shortest input."""
    columns = [_items(value, "zip") for value in values]
    if strict and len({len(column) for column in columns}) > 1:
        lengths = ", ".join(str(len(column)) for column in columns)
        raise SglValueError(f"zip(strict=true) got inputs of different lengths ({lengths})")
    return [list(row) for row in zip(*columns, strict=False)]


def any_(value: Any) -> bool:
    """any(xs) -> bool: true if some item of `xs` is true."""
    return any(_items(value, "any"))


def all_(value: Any) -> bool:
    """all(xs) -> bool: true if every item of `xs` is true (and for an empty list)."""
    return all(_items(value, "all"))


async def sorted_(value: Any, key: Any = None, reverse: Any = False) -> list[Any]:
    """sorted(xs, key=none, reverse=false) -> list: a new sorted list; `key` maps items to sort keys."""
    items = _items(value, "sorted")
    keys = await _keys(items, key, "sorted")
    order = list(range(len(items)))
    try:
        order.sort(key=keys.__getitem__, reverse=bool(reverse))
    except TypeError:
        raise _compare_error("sorted", keys) from None
    return [items[i] for i in order]


async def _extreme(function: str, args: tuple[Any, ...], key: Any, default: Any) -> Any:
    if not args:
        raise SglTypeError(f"{function}() expects at least one argument")
    items = _items(args[0], function) if len(args) == 1 else list(args)
    if not items:
        if default is _NOTHING:
            raise SglValueError(f"{function}() of an empty list (give default=...)")
        return default
    keys = await _keys(items, key, function)
    best = 0
    try:
        for i in range(1, len(items)):
            if (keys[i] < keys[best]) if function == "min" else (keys[i] > keys[best]):
                best = i
    except TypeError:
        raise _compare_error(function, keys) from None
    return items[best]


async def min_(*args: Any, key: Any = None, default: Any = _NOTHING) -> Any:
    """min(xs) / min(a, b, ...) with key=none, default=... -> the smallest item (first on ties)."""
    return await _extreme("min", args, key, default)


async def max_(*args: Any, key: Any = None, default: Any = _NOTHING) -> Any:
    """max(xs) / max(a, b, ...) with key=none, default=... -> the largest item (first on ties)."""
    return await _extreme("max", args, key, default)


# ---------------------------------------------------------------- numbers


def sum_(value: Any, start: Any = 0) -> Any:
    """sum(xs, start=0) -> number: `start` plus the items of `xs` (numbers, or lists with start=[])."""
    total = start
    for item in _items(value, "sum"):
        if isinstance(item, str):
            raise SglTypeError('sum() cannot add strings; use "".join(xs)')
        if isinstance(total, list) and isinstance(item, list):
            check_size(total, len(total) + len(item), "sum()")
        try:
            total = total + item
        except TypeError:
            raise SglTypeError(
                f"sum() cannot add `{type_name(total)}` and `{type_name(item)}`"
            ) from None
    return total


def abs_(value: Any) -> Any:
    """abs(x) -> number: the absolute value of an int or float."""
    if not _is_number(value):
        raise SglTypeError(f"abs() takes a number, not `{type_name(value)}`")
    return abs(value)


def round_(value: Any, ndigits: Any = None) -> Any:
    """round(x, ndigits=none) -> number: `x` rounded half-to-even; an int when ndigits is none."""
    if not _is_number(value):
        raise SglTypeError(f"round() takes a number, not `{type_name(value)}`")
    if ndigits is not None and (not isinstance(ndigits, int) or isinstance(ndigits, bool)):
        raise SglTypeError(f"round() ndigits must be an int, not `{type_name(ndigits)}`")
    try:
        return round(value, ndigits)
    except (ValueError, OverflowError) as exc:
        raise SglValueError(f"round(): {exc}") from None


# ---------------------------------------------------------------- output and JSON


def print_(*args: Any, sep: Any = " ", end: Any = "\n") -> None:
    """print(*values, sep=" ", end="\\n"): write the values as text to stdout, never to the prompt."""
    if not isinstance(sep, str) or not isinstance(end, str):
        raise SglTypeError("print() sep and end must be strings")
    stream = output.get() or sys.stdout
    stream.write(sep.join(to_str(arg) for arg in args) + end)
    stream.flush()


def json_dumps(value: Any, indent: Any = None) -> str:
    """json_dumps(x, indent=none) -> str: `x` as JSON text; non-ASCII characters are kept as is."""
    if indent is not None and (not isinstance(indent, int) or isinstance(indent, bool)):
        raise SglTypeError(f"json_dumps() indent must be an int, not `{type_name(indent)}`")
    if indent is not None:
        check_text_len(indent, "json_dumps() indent")
    encoder = json.JSONEncoder(indent=indent, ensure_ascii=False)
    pieces = []
    num_chars = 0
    try:
        for piece in encoder.iterencode(value):
            num_chars += len(piece)
            check_text_len(num_chars, "json_dumps()")
            pieces.append(piece)
        return "".join(pieces)
    except TypeError:
        raise SglTypeError(f"json_dumps() cannot encode {_unencodable(value)}") from None
    except ValueError as exc:  # a list that contains itself
        raise SglValueError(f"json_dumps(): {exc}") from None


def _unencodable(value: Any) -> str:
    """Name the first value inside `value` that JSON cannot hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"a `{type_name(key)}` dict key"
            found = _unencodable(item)
            if found:
                return found
        return ""
    if isinstance(value, list):
        return next((found for found in map(_unencodable, value) if found), "")
    if value is None or isinstance(value, (str, int, float, bool)):
        return ""
    return f"a `{type_name(value)}`"


def json_loads(text: Any) -> Any:
    """json_loads(s) -> value: parse JSON text into dicts, lists, strings, numbers, bools and none."""
    if not isinstance(text, str):
        raise SglTypeError(f"json_loads() takes a str, not `{type_name(text)}`")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SglValueError(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise SglValueError("invalid JSON: nested too deeply") from None


BUILTINS: dict[str, Callable[..., Any]] = {
    "len": len_,
    "range": range_,
    "str": str_,
    "int": int_,
    "float": float_,
    "bool": bool_,
    "list": list_,
    "dict": dict_,
    "min": min_,
    "max": max_,
    "sum": sum_,
    "abs": abs_,
    "round": round_,
    "sorted": sorted_,
    "reversed": reversed_,
    "enumerate": enumerate_,
    "zip": zip_,
    "any": any_,
    "all": all_,
    "print": print_,
    "json_dumps": json_dumps,
    "json_loads": json_loads,
}
"""Every built-in the interpreter puts in scope, except `run_batch`, `meta` and `tool` (which it
owns)."""
