"""A model's reasoning apart from its answer: the `<think>…</think>` block that reasoning
models write before answering (`GenRequest.reasoning`)."""

from __future__ import annotations

from dataclasses import replace

from sgl_lang.protocol.requests import GenResult

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a model's output. The reasoning is the text of a leading
    `<think>` block, or all text before a `</think>` (chat templates that open the block in
    the prompt); an unclosed block is all reasoning (the output was cut). None: there is none.
    The answer loses the whitespace that separates it from the block."""
    stripped = text.lstrip()
    opened = stripped.startswith(THINK_OPEN)
    body = stripped[len(THINK_OPEN) :] if opened else text
    end = body.find(THINK_CLOSE)
    if end < 0:
        return (body.strip(), "") if opened else (None, text)
    return body[:end].strip(), body[end + len(THINK_CLOSE) :].lstrip()


def with_reasoning(result: GenResult) -> GenResult:
    """`result` with its `<think>` block moved from `text` to `reasoning`."""
    reasoning, answer = split_reasoning(result.text)
    return replace(result, text=answer, reasoning=reasoning)
