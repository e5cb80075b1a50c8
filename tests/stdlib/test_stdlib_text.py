"""The `text` module: dedent, approximate-token truncation and word chunks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.stdlib.text import chunk, count_tokens, dedent, truncate_tokens


def test_dedent() -> None:
    assert dedent("    a\n      b\n") == "a\n  b\n"
    with pytest.raises(SglTypeError, match=r"text.dedent\(\) needs a str, not `int`"):
        dedent(1)  # type: ignore[arg-type]


def test_tokens_are_words_and_punctuation_marks() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  ") == 0


def test_truncate_tokens() -> None:
    text = "Hello, big world! Bye."
    assert truncate_tokens(text, 1) == "Hello"
    assert truncate_tokens(text, 2) == "Hello,"
    assert truncate_tokens(text, 4) == "Hello, big world"
    assert truncate_tokens(text, 7) == text
    assert truncate_tokens(text, 100) == text
    assert truncate_tokens("a b  ", 2) == "a b  "  # nothing cut: unchanged, whitespace kept
    assert truncate_tokens(text, 0) == ""
    with pytest.raises(SglValueError, match="n must be >= 0, got -1"):
        truncate_tokens(text, -1)
    with pytest.raises(SglTypeError, match="n must be an int, not `float`"):
        truncate_tokens(text, 1.5)  # type: ignore[arg-type]


@settings(deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=50))
def test_truncated_text_is_a_prefix_within_the_budget(text: str, n: int) -> None:
    cut = truncate_tokens(text, n)
    assert text.startswith(cut)
    assert count_tokens(cut) == min(n, count_tokens(text))


def test_chunk_by_words() -> None:
    text = "one two three four five"
    assert chunk(text, 2) == ["one two", "three four", "five"]
    assert chunk(text, 3, overlap=1) == ["one two three", "three four five"]
    assert chunk(text, 10) == [text]
    assert chunk("", 3) == []
    assert chunk("a\nb c", 2) == ["a\nb", "c"]  # cut from the original text: line breaks survive


def test_chunk_rejects_bad_sizes() -> None:
    with pytest.raises(SglValueError, match="size must be >= 1"):
        chunk("a", 0)
    with pytest.raises(SglValueError, match=r"overlap \(2\) must be less than size \(2\)"):
        chunk("a", 2, overlap=2)
    with pytest.raises(SglTypeError, match="size must be an int"):
        chunk("a", "2")  # type: ignore[arg-type]


@settings(deadline=None)
@given(st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), max_size=30), st.integers(1, 6))
def test_chunks_cover_every_word_in_order(words: list[str], size: int) -> None:
    overlap = size // 2
    pieces = chunk(" ".join(words), size, overlap)
    assert all(len(piece.split()) <= size for piece in pieces)
    rebuilt = pieces[0].split() if pieces else []
    for piece in pieces[1:]:
        rebuilt += piece.split()[overlap:]
    assert rebuilt == words
