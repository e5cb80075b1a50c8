"""Prompts as backends receive them: free text, chat messages and images, in order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """Free text, sent to the model as is (completion style)."""

    text: str


@dataclass(frozen=True)
class Message:
    """A chat message; `role` is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class Image:
    """An image: a file path, an URL, or the raw bytes."""

    source: str | bytes


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
                parts.append(f"{segment.role.capitalize()}: {segment.content}\n")
            else:
                parts.append("<image>")
        if self.open_role is not None:
            last = self.segments[-1] if self.segments else None
            if isinstance(last, Message) and last.role == self.open_role:
                parts[-1] = parts[-1].removesuffix("\n")
            else:
                parts.append(f"{self.open_role.capitalize()}: ")
        return "".join(parts)
