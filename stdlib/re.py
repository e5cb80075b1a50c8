"""The `re` module: Python regular expressions, with matches as plain dicts.

Patterns are Python's (checked by `re`) and run on the `regex` package with a time limit per call
(`limits.Limits.regex_timeout_s`): a pattern that backtracks for ever is a `limit error`,
and one Ctrl-C stops a match at once.

Python's match objects do not exist in the language, so `match`, `search` and
`fullmatch` return a plain dict (or `none` when nothing matches):
`text` the matched text (`m.group(0)`), `groups` the list of capture groups
(`none` for a group that did not take part), `named` a dict of named groups,
and `start`/`end` character offsets. Flags are written inline: `r"(?i)yes"`.
"""

from __future__ import annotations

import inspect
import re as _python_re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import regex as _re

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.limits import check_num_items, check_text_len, current, interruptible, limit_error
from sgl_lang.values import to_repr, type_name

T = TypeVar("T")


def _compile(pattern: Any, function: str) -> _re.Pattern[str]:
    if not isinstance(pattern, str):
        raise SglTypeError(f"re.{function}() pattern must be a str, not `{type_name(pattern)}`")
    try:
        _python_re.compile(pattern)  # Python's syntax and error messages
    except _python_re.error as exc:
        raise SglValueError(f"re: bad pattern {to_repr(pattern)}: {exc}") from None
    with _timed(function):
        return _re.compile(pattern)


def _run(function: str, method: Callable[..., T], *args: Any) -> T:
    """`method(*args, timeout=...)`: one call of the regex engine, within the time limit."""
    with _timed(function):
        return method(*args, timeout=current.get().regex_timeout_s)


@contextmanager
def _timed(function: str) -> Iterator[None]:
    """Within: the regex engine's timeout is a `limit error`; Ctrl-C interrupts it."""
    try:
        with interruptible():
            yield
    except TimeoutError:
        seconds = current.get().regex_timeout_s
        raise limit_error(
            f"re.{function}() ran longer than the regex time limit of {seconds:g} s "
            "(regex_timeout_s); the pattern may backtrack catastrophically",
            "regex_timeout_s",
        ) from None


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
    return _as_value(_run("match", _compile(pattern, "match").match, _text(text, "match")))


def search(pattern: str, text: str) -> dict[str, Any] | None:
    """search(pattern, text) -> dict | none: the first match anywhere in `text`."""
    return _as_value(_run("search", _compile(pattern, "search").search, _text(text, "search")))


def fullmatch(pattern: str, text: str) -> dict[str, Any] | None:
    """fullmatch(pattern, text) -> dict | none: a match of the whole of `text`."""
    compiled = _compile(pattern, "fullmatch")
    return _as_value(_run("fullmatch", compiled.fullmatch, _text(text, "fullmatch")))


def findall(pattern: str, text: str) -> list[Any]:
    """findall(pattern, text) -> list: every match's text; with groups, the group (or list of groups)."""
    compiled = _compile(pattern, "findall")
    found: list[Any] = []
    for match in _matches("findall", compiled, _text(text, "findall")):
        check_num_items(len(found) + 1, "re.findall()")
        groups = match.groups(default="")
        found.append(
            match.group(0) if not groups else groups[0] if len(groups) == 1 else list(groups)
        )
    return found


def split(pattern: str, text: str, maxsplit: int = 0) -> list[str | None]:
    """split(pattern, text, maxsplit=0) -> list[str]: `text` cut at every match of `pattern`."""
    if not isinstance(maxsplit, int) or isinstance(maxsplit, bool):
        raise SglTypeError(f"re.split() maxsplit must be an int, not `{type_name(maxsplit)}`")
    limit = current.get().max_items
    bounded = limit if maxsplit <= 0 or maxsplit > limit else maxsplit  # at most the limit's cuts
    pieces = _run("split", _compile(pattern, "split").split, _text(text, "split"), bounded)
    check_num_items(len(pieces), "re.split()")  # over it when the text had more cuts
    return pieces


async def sub(pattern: str, repl: Any, text: str, count: int = 0) -> str:
    """sub(pattern, repl, text, count=0) -> str: replace matches with `repl`.

    `repl` is a str (`\\1` and `\\g<name>` refer to groups) or a function that
    receives the match dict and returns the replacement str.
    """
    compiled = _compile(pattern, "sub")
    subject = _text(text, "sub")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise SglValueError(f"re.sub() count must be an int >= 0, not {to_repr(count)}")
    if not isinstance(repl, str) and not callable(repl):
        raise SglTypeError(f"re.sub() repl must be a str or a function, not `{type_name(repl)}`")
    pieces: list[str] = []
    last = num_chars = 0
    for i, found in enumerate(_matches("sub", compiled, subject)):
        if count and i == count:
            break
        replacement = await _replacement(repl, found)
        num_chars += found.start() - last + len(replacement)
        check_text_len(num_chars + len(subject) - found.end(), "re.sub()")
        pieces += [subject[last : found.start()], replacement]
        last = found.end()
    pieces.append(subject[last:])
    return "".join(pieces)


def _matches(function: str, compiled: _re.Pattern[str], text: str) -> Iterator[_re.Match[str]]:
    """The matches of `compiled` in `text`, each found within the time limit."""
    found_all = _run(function, compiled.finditer, text)
    while True:
        with _timed(function):
            found = next(found_all, None)
        if found is None:
            return
        yield found


async def _replacement(repl: Any, found: _re.Match[str]) -> str:
    """What replaces `found`: the template `repl` expanded, or what the function `repl` returns."""
    if isinstance(repl, str):
        # each group reference (at most one per backslash) expands to at most the whole match
        check_text_len(len(repl) + repl.count("\\") * len(found.group(0)), "re.sub()")
        try:
            return found.expand(repl)
        except (_re.error, IndexError) as exc:
            raise SglValueError(f"re.sub(): bad replacement {to_repr(repl)}: {exc}") from None
    replacement = repl(_as_value(found))
    if inspect.isawaitable(replacement):
        replacement = await replacement
    if not isinstance(replacement, str):
        raise SglTypeError(
            f"re.sub() repl function must return a str, not `{type_name(replacement)}`"
        )
    return replacement


EXPORTS = {
    "match": match,
    "search": search,
    "fullmatch": fullmatch,
    "findall": findall,
    "split": split,
    "sub": sub,
}
