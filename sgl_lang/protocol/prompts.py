"""Prompts as backends receive them: free text, chat messages and images, in order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sgl_lang.protocol.tools import ToolCall, ToolResult


@dataclass(frozen=True)
class Text:
    """Free text, sent to the model as is (completion style)."""

    text: str


@dataclass(frozen=True)
class Image:
    """An image: a file path, an URL, or the raw bytes."""

    source: str | bytes


Part = str | Image | ToolCall | ToolResult
"""A piece of a message's content: text, an image, a tool call (in an assistant message) or a
tool's result (in a `tool` message)."""


@dataclass(frozen=True, init=False)
class Message:
    """A chat message; `role` is "system", "user", "assistant" or "tool" (a tool's result).
    `content` is its parts in order (given as one string for a text-only message); adjacent
    text parts are joined."""

    role: str
    content: tuple[Part, ...]

    def __init__(self, role: str, content: str | Iterable[Part]) -> None:
        object.__setattr__(self, "role", role)
        object.__setattr__(
            self, "content", _joined((content,) if isinstance(content, str) else content)
        )

    @property
    def text(self) -> str:
        """The text parts, joined (images left out)."""
        return "".join(part for part in self.content if isinstance(part, str))

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(part for part in self.content if isinstance(part, Image))

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(part for part in self.content if isinstance(part, ToolCall))

    @property
    def tool_results(self) -> tuple[ToolResult, ...]:
        return tuple(part for part in self.content if isinstance(part, ToolResult))


def _joined(parts: Iterable[Part]) -> tuple[Part, ...]:
    """`parts` with adjacent strings joined and empty strings dropped."""
    joined: list[Part] = []
    for part in parts:
        if isinstance(part, str) and joined and isinstance(joined[-1], str):
            joined[-1] += part
        elif part != "":
            joined.append(part)
    return tuple(joined)


Segment = Text | Message | Image


@dataclass(frozen=True)
class Prompt:
    """What the program has built so far, in order.

    When `open_role` is set, the prompt ends inside a message of that role which is still
    open: generation continues its content, with no end-of-turn after it. If the last segment
    is not a `Message` of that role, the prompt ends with an empty open message of that role.
    """

    segments: tuple[Segment, ...]
    open_role: str | None = None

    @property
    def is_chat(self) -> bool:
        return any(isinstance(segment, Message) for segment in self.segments)

    def plain_text(self) -> str:
        """The fallback rendering: text as is, messages as `Role: content` lines (the open
        message without its newline), images as `<image>`."""
        parts: list[str] = []
        for segment in self.segments:
            if isinstance(segment, Text):
                parts.append(segment.text)
            elif isinstance(segment, Message):
                parts.append(f"{segment.role.capitalize()}: {_plain_content(segment)}\n")
            else:
                parts.append("<image>")
        if self.open_role is not None:
            last = self.segments[-1] if self.segments else None
            if isinstance(last, Message) and last.role == self.open_role:
                parts[-1] = parts[-1].removesuffix("\n")
            else:
                parts.append(f"{self.open_role.capitalize()}: ")
        return "".join(parts)


def _plain_content(message: Message) -> str:
    """Text as is, images as `<image>`, tool calls in their constrained form, results as text."""
    return "".join(_plain_part(part) for part in message.content)


def _plain_part(part: Part) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, Image):
        return "<image>"
    if isinstance(part, ToolCall):
        return part.as_json()
    return part.content
