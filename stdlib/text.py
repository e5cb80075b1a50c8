"""The `text` module: dedent, truncate by approximate tokens, and chunk by words.

No tokenizer is available to the standard library, so "tokens" are
approximated: a token is a run of word characters or one punctuation character
(regex `\\w+|[^\\w\\s]`), which slightly overcounts compared with BPE
tokenizers for English. `chunk` counts words (runs of non-whitespace) and cuts
the original text, so line breaks inside a chunk survive.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.limits import check_num_items, check_text_len
from sgl_lang.values import type_name

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\S+")


def _str(value: Any, function: str) -> str:
    if not isinstance(value, str):
        raise SglTypeError(f"text.{function}() needs a str, not `{type_name(value)}`")
    return value


def _count(value: Any, function: str, what: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SglTypeError(f"text.{function}() {what} must be an int, not `{type_name(value)}`")
    if value < minimum:
        raise SglValueError(f"text.{function}() {what} must be >= {minimum}, got {value}")
    return value


def dedent(text: str) -> str:
    """dedent(text) -> str: remove the indentation common to all lines (like `textwrap.dedent`)."""
    return textwrap.dedent(_str(text, "dedent"))


def count_tokens(text: str) -> int:
    """count_tokens(text) -> int: the approximate number of tokens (words and punctuation marks)."""
    return sum(1 for _ in _TOKEN.finditer(_str(text, "count_tokens")))


def truncate_tokens(text: str, n: int) -> str:
    """truncate_tokens(text, n) -> str: `text` cut after its n-th approximate token.

    Text with at most `n` tokens comes back unchanged; otherwise the result ends
    at the end of token `n` (a token is a word or one punctuation mark).
    """
    subject = _str(text, "truncate_tokens")
    limit = _count(n, "truncate_tokens", "n", 0)
    if limit == 0:
        return ""
    for i, token in enumerate(_TOKEN.finditer(subject), 1):
        if i == limit:
            rest = subject[token.end() :]
            return subject if _TOKEN.search(rest) is None else subject[: token.end()]
    return subject


def chunk(text: str, size: int, overlap: int = 0) -> list[str]:
    """chunk(text, size, overlap=0) -> list[str]: pieces of `size` words; consecutive pieces share `overlap` words.

    Each piece is the original text from its first word to its last, so line
    breaks survive; the last piece may be shorter. Empty text gives `[]`.
    """
    subject = _str(text, "chunk")
    num_words = _count(size, "chunk", "size", 1)
    num_shared = _count(overlap, "chunk", "overlap", 0)
    if num_shared >= num_words:
        raise SglValueError(
            f"text.chunk() overlap ({num_shared}) must be less than size ({num_words})"
        )
    words = list(_WORD.finditer(subject))
    spans = []
    for first in range(0, len(words), num_words - num_shared):
        last = min(first + num_words, len(words)) - 1
        spans.append((words[first].start(), words[last].end()))
        if last == len(words) - 1:
            break
    check_num_items(len(spans), "text.chunk()")
    check_text_len(sum(end - start for start, end in spans), "text.chunk() (its pieces together)")
    return [subject[start:end] for start, end in spans]


EXPORTS = {
    "dedent": dedent,
    "count_tokens": count_tokens,
    "truncate_tokens": truncate_tokens,
    "chunk": chunk,
}
