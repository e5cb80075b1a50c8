"""Streaming detokenization with the real SmolLM2 tokenizer (byte-level BPE): pieces never split
a UTF-8 character, add up to the full decode, and stop strings across token boundaries end the
text before them."""

from __future__ import annotations

from typing import Any

import pytest

from sgl_lang.runtime.detokenizer import IncrementalDecoder

TEXTS = ["🦙 llama", "héllo wörld 日本語 and more", "Hello world, this is a test.", "a\n\n  b\tc"]


def stream(tokenizer: Any, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    """Push the tokens of `text` one by one; returns every piece (flush last) and `stopped`."""
    decoder = IncrementalDecoder(tokenizer, stop, tokenizer.encode("Say:"))
    pieces = [decoder.push(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    return [*pieces, decoder.flush()], decoder.stopped


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_add_up_and_never_split_a_character(tokenizer: Any, text: str) -> None:
    pieces, stopped = stream(tokenizer, text)
    assert "".join(pieces) == text and not stopped
    assert not any("\ufffd" in piece for piece in pieces)


def test_a_multi_token_character_waits_for_its_last_byte(tokenizer: Any) -> None:
    ids = tokenizer.encode("🦙 llama", add_special_tokens=False)  # the emoji is 3 byte tokens
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push(t) for t in ids[:3]] == ["", "", "🦙"]


@pytest.mark.parametrize(
    ("stop", "want"),
    [
        (("o wor",), "Hell"),  # inside one token + across a boundary
        ((" is a",), "Hello world, this"),  # exactly two tokens
        (("test.",), "Hello world, this is a "),
        (("this", "world"), "Hello "),  # the earliest of several
        (("xyz", ", this"), "Hello world"),
    ],
)
def test_stop_strings_end_the_text_before_them(
    tokenizer: Any, stop: tuple[str, ...], want: str
) -> None:
    pieces, stopped = stream(tokenizer, "Hello world, this is a test.", stop)
    assert stopped and "".join(pieces) == want
    assert pieces[-1] == ""  # nothing after the stop, not even at flush


def test_text_that_only_starts_a_stop_string_is_held_then_released(tokenizer: Any) -> None:
    decoder = IncrementalDecoder(tokenizer, ("worlds",))
    ids = tokenizer.encode("Hello world", add_special_tokens=False)
    assert [decoder.push(t) for t in ids] == ["Hello", " "]  # "world" could start "worlds"
    assert decoder.flush() == "world" and not decoder.stopped


def test_special_tokens_are_not_text(tokenizer: Any) -> None:
    decoder = IncrementalDecoder(tokenizer)
    assert decoder.push(tokenizer.eos_token_id) == ""
    assert decoder.push(tokenizer.encode("Hi", add_special_tokens=False)[0]) == "Hi"


def test_a_stop_regex_holds_all_text_back_and_include_stop_keeps_the_stop(tokenizer: Any) -> None:
    ids = tokenizer.encode("Hello world, this is 42 and more", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer, (), (), stop_regex=r"[0-9]+ ")
    pieces = [decoder.push(t) for t in ids]
    assert decoder.stopped and [p for p in pieces if p] == ["Hello world, this is "]
    keep = IncrementalDecoder(tokenizer, (",",), (), stop_regex="[0-9]+ ", include_stop=True)
    assert "".join(keep.push(t) for t in ids) == "Hello world,"
