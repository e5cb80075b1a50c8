"""The `re` module: matches as dicts, Python's findall/sub/split, plain errors."""

from __future__ import annotations

import asyncio

import pytest

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.stdlib.re import findall, fullmatch, match, search, split, sub


def test_match_only_at_the_start() -> None:
    assert match(r"\d+", "42 apples") == {
        "text": "42",
        "groups": [],
        "named": {},
        "start": 0,
        "end": 2,
    }
    assert match(r"\d+", "apples 42") is None


def test_search_reports_groups_and_offsets() -> None:
    found = search(r"(?P<key>\w+)=(\d+)?", "x: retries=")
    assert found == {
        "text": "retries=",
        "groups": ["retries", None],
        "named": {"key": "retries"},
        "start": 3,
        "end": 11,
    }
    assert search("(?i)YES", "oh yes") is not None
    assert search("z", "abc") is None


def test_fullmatch() -> None:
    assert fullmatch(r"\d+", "123") is not None
    assert fullmatch(r"\d+", "123a") is None


def test_findall_like_python_with_lists_for_groups() -> None:
    assert findall(r"\d+", "a1 b22 c333") == ["1", "22", "333"]
    assert findall(r"(\w)=(\d)", "a=1, b=2") == [["a", "1"], ["b", "2"]]
    assert findall(r"(\w)=\d", "a=1, b=2") == ["a", "b"]


def test_split() -> None:
    assert split(r"\s*,\s*", "a , b,c") == ["a", "b", "c"]
    assert split(",", "a,b,c", maxsplit=1) == ["a", "b,c"]
    with pytest.raises(SglTypeError, match="maxsplit must be an int"):
        split(",", "a", maxsplit="1")  # type: ignore[arg-type]


def test_sub_with_a_template() -> None:
    assert asyncio.run(sub(r"(\w+)@(\w+)", r"\2 at \1", "me@home")) == "home at me"
    assert asyncio.run(sub("a", "b", "aaa", count=2)) == "bba"
    with pytest.raises(SglValueError, match="bad replacement"):
        asyncio.run(sub("a", r"\9", "a"))


def test_sub_with_a_function_sync_or_async() -> None:
    async def shout(found: dict[str, str]) -> str:
        return found["text"].upper()

    assert asyncio.run(sub(r"\b\w", shout, "hello big world", count=2)) == "Hello Big world"
    assert asyncio.run(sub(r"\d", lambda m: str(int(m["text"]) * 2), "a1b4")) == "a2b8"
    with pytest.raises(SglTypeError, match="must return a str, not `int`"):
        asyncio.run(sub(r"\d", lambda m: 5, "1"))
    with pytest.raises(SglTypeError, match="repl must be a str or a function"):
        asyncio.run(sub("a", 1, "a"))
    with pytest.raises(SglValueError, match="count must be an int >= 0"):
        asyncio.run(sub("a", "b", "a", count=-1))


def test_bad_pattern_is_a_value_error() -> None:
    with pytest.raises(SglValueError) as info:
        search("(", "x")
    assert info.value.message.startswith('re: bad pattern "(": missing ), unterminated subpattern')


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(SglTypeError, match=r"re.search\(\) pattern must be a str, not `int`"):
        search(1, "x")  # type: ignore[arg-type]
    with pytest.raises(SglTypeError, match=r"re.match\(\) text must be a str, not `none`"):
        match("x", None)  # type: ignore[arg-type]
