"""Streaming detokenization: token ids in, text pieces out, never splitting a UTF-8 character and
never emitting any part of a stop string.

Text is decoded over a sliding window of tokens (a few prompt tokens give the first output token
its context, e.g. a leading space). A window whose text ends in U+FFFD is an incomplete byte
sequence: it waits for the next token. Decoded text then waits in `_pending` while its tail could
still begin a stop string; once a stop string appears, the text before it is emitted (through it,
with `include_stop`) and the decoder is `stopped`. A `stop_regex` is searched in all the text
decoded so far, so with one all text waits until the end or a match (a regex match cannot be
foreseen from a prefix).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

NUM_CONTEXT_TOKENS = 4  # prompt tokens decoded with the first output tokens, then cut off
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Decodes one request's output tokens into text pieces (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str] = (),
        prompt_ids: Sequence[int] = (),
        stop_regex: str | None = None,
        include_stop: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.stop_regex = re.compile(stop_regex) if stop_regex else None
        self.include_stop = include_stop
        self._ids = list(prompt_ids[-NUM_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # window start: decoded only as context
        self._read_offset = len(self._ids)  # tokens before this are already text
        self._pending = ""  # decoded, not yet emitted (could start a stop string)
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one output token; returns the text that is now final (possibly empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        context = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) <= len(context) or text.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete UTF-8 sequence: wait for more bytes
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(self._pending + text[len(context) :])

    def flush(self) -> str:
        """The text still held back, at the end of the request (stop prefixes, partial bytes)."""
        if self.stopped:
            return ""
        tail = self._decode(self._ids[self._prefix_offset :])
        context = self._decode(self._ids[self._prefix_offset : self._read_offset])
        self._read_offset = len(self._ids)
        text = self._release(self._pending + tail[len(context) :])
        text, self._pending = text + self._pending, ""
        return text

    def _release(self, text: str) -> str:
        hits = [(i, i + len(s)) for s in self.stop if (i := text.find(s)) >= 0]
        if self.stop_regex is not None and (match := self.stop_regex.search(text)):
            hits.append((match.start(), match.end()))
        if hits:
            self.stopped, self._pending = True, ""
            start, end = min(hits)
            return text[: end if self.include_stop else start]
        num_held = len(text) if self.stop_regex else _longest_stop_prefix(text, self.stop)
        self._pending = text[len(text) - num_held :]
        return text[: len(text) - num_held]

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


def _longest_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
