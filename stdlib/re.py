"""The `re` module: Python regular expressions, with matches as plain dicts.

Python's match objects do not exist in the language, so `match`, `search` and
`fullmatch` return a plain dict (or `none` when nothing matches):
`text` the matched text (`m.group(0)`), `groups` the list of capture groups
(`none` for a group that did not take part), `named` a dict of named groups,
and `start`/`end` character offsets. Flags are written inline: `r"(?i)yes"`.
"""

from __future__ import annotations

import inspect
import re as _re
from typing import Any

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.values import to_repr, type_name


def _compile(pattern: Any, function: str) -> _re.Pattern[str]:
    if not isinstance(pattern, str):
        raise SglTypeError(f"re.{function}() pattern must be a str, not `{type_name(pattern)}`")
    try:
        return _re.compile(pattern)
    except _re.error as exc:
        raise SglValueError(f"re: bad pattern {to_repr(pattern)}: {exc}") from None


def _text(text: Any, function: str) -> str:
    if not isinstance(text, str):
        raise SglTypeError(f"re.{function}() text must be a str, not `{type_name(text)}`")
    return text


def _as_value(found: _re.Match[str] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "text": found.group(0),
        "groups": list(found.groups()),
        "named": found.groupdict(),
        "start": found.start(),
        "end": found.end(),
    }


def match(pattern: str, text: str) -> dict[str, Any] | None:
    """match(pattern, text) -> dict | none: a match at the start of `text` (see the module doc)."""
    return _as_value(_compile(pattern, "match").match(_text(text, "match")))


def search(pattern: str, text: str) -> dict[str, Any] | None:
    """search(pattern, text) -> dict | none: the first match anywhere in `text`."""
    return _as_value(_compile(pattern, "search").search(_text(text, "search")))


def fullmatch(pattern: str, text: str) -> dict[str, Any] | None:
    """fullmatch(pattern, text) -> dict | none: a match of the whole of `text`."""
    return _as_value(_compile(pattern, "fullmatch").fullmatch(_text(text, "fullmatch")))


def findall(pattern: str, text: str) -> list[Any]:
    """findall(pattern, text) -> list: every match's text; with groups, the group (or list of groups)."""
    found = _compile(pattern, "findall").findall(_text(text, "findall"))
    return [list(item) if isinstance(item, tuple) else item for item in found]


def split(pattern: str, text: str, maxsplit: int = 0) -> list[str | None]:
    """split(pattern, text, maxsplit=0) -> list[str]: `text` cut at every match of `pattern`."""
    if not isinstance(maxsplit, int) or isinstance(maxsplit, bool):
        raise SglTypeError(f"re.split() maxsplit must be an int, not `{type_name(maxsplit)}`")
    return _compile(pattern, "split").split(_text(text, "split"), maxsplit)


async def sub(pattern: str, repl: Any, text: str, count: int = 0) -> str:
    """sub(pattern, repl, text, count=0) -> str: replace matches with `repl`.

    `repl` is a str (`\\1` and `\\g<name>` refer to groups) or a function that
    receives the match dict and returns the replacement str.
    """
    compiled = _compile(pattern, "sub")
    subject = _text(text, "sub")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise SglValueError(f"re.sub() count must be an int >= 0, not {to_repr(count)}")
    if isinstance(repl, str):
        try:
            return compiled.sub(repl, subject, count)
        except (_re.error, IndexError) as exc:
            raise SglValueError(f"re.sub(): bad replacement {to_repr(repl)}: {exc}") from None
    if not callable(repl):
        raise SglTypeError(f"re.sub() repl must be a str or a function, not `{type_name(repl)}`")
    pieces: list[str] = []
    last = 0
    for i, found in enumerate(compiled.finditer(subject)):
        if count and i == count:
            break
        replacement = repl(_as_value(found))
        if inspect.isawaitable(replacement):
            replacement = await replacement
        if not isinstance(replacement, str):
            raise SglTypeError(
                f"re.sub() repl function must return a str, not `{type_name(replacement)}`"
            )
        pieces += [subject[last : found.start()], replacement]
        last = found.end()
    pieces.append(subject[last:])
    return "".join(pieces)


EXPORTS = {
    "match": match,
    "search": search,
    "fullmatch": fullmatch,
    "findall": findall,
    "split": split,
    "sub": sub,
}
