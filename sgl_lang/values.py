"""How values print: `str()` and `repr()` in the language's own literal syntax."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sgl_lang.limits import check_text_len


def to_str(value: Any) -> str:
    """`str(value)` as the language defines it: strings as is, everything else as a literal."""
    return value if isinstance(value, str) else to_repr(value)


def to_repr(value: Any) -> str:
    """The literal syntax of a value: `true`, `none`, `[1, "a"]`, `{"k": 2}`."""
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + _joined(to_repr(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + _joined(f"{to_repr(k)}: {to_repr(v)}" for k, v in value.items()) + "}"
    return str(value)


def _joined(parts: Iterable[str]) -> str:
    """`", ".join(parts)`, refused as soon as it would pass `max_text_len` (a list that holds one
    long str many times is small in memory but not as text)."""
    pieces: list[str] = []
    num_chars = 2
    for part in parts:
        num_chars += len(part) + 2
        check_text_len(num_chars, "the text of this value")
        pieces.append(part)
    return ", ".join(pieces)


def _quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def type_name(value: Any) -> str:
    """The language's name for a value's type, for error messages."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    for python_type, name in (
        (int, "int"),
        (float, "float"),
        (str, "str"),
        (list, "list"),
        (dict, "dict"),
    ):
        if isinstance(value, python_type):
            return name
    return getattr(value, "type_name", type(value).__name__)
