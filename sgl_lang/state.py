"""Prompt states: the text, role messages and images a program has appended, and its variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sgl_lang.protocol import Image, Message, Part, Prompt, Segment, Text, ToolCall, ToolResult


@dataclass(frozen=True)
class Piece:
    """One appended piece. `message` numbers the role message it belongs to (None: free text)."""

    text: str
    role: str | None = None
    message: int | None = None
    generated: bool = False
    image: str | bytes | None = None
    tool_part: ToolCall | ToolResult | None = None


@dataclass
class State:
    """A conversation being built. Copying is cheap: pieces are immutable and shared."""

    pieces: list[Piece] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    open_role: str | None = None
    num_messages: int = 0
    num_chars: int = 0
    """Characters of text appended so far."""

    def copy(self) -> State:
        return State(
            list(self.pieces),
            dict(self.variables),
            dict(self.meta),
            self.open_role,
            self.num_messages,
            self.num_chars,
        )

    def append(self, text: str, *, generated: bool = False) -> None:
        """Append text to the open message, or as free text when no message is open."""
        if not text:
            return
        message = self.num_messages - 1 if self.open_role else None
        self.pieces.append(Piece(text, self.open_role, message, generated))
        self.num_chars += len(text)

    def append_image(self, source: str | bytes) -> None:
        message = self.num_messages - 1 if self.open_role else None
        self.pieces.append(Piece("", self.open_role, message, image=source))

    def append_tool_part(self, part: ToolCall | ToolResult) -> None:
        """Append a tool call (to the open assistant message) or a result (to a `tool` one)."""
        self.pieces.append(Piece("", self.open_role, self.num_messages - 1, tool_part=part))

    def open_message(self, role: str) -> None:
        """Start a message of `role`; what is appended until `close_message` is its content."""
        self.open_role = role
        self.num_messages += 1
        # An empty marker so that an empty message still exists in the prompt.
        self.pieces.append(Piece("", role, self.num_messages - 1))

    def close_message(self) -> None:
        self.open_role = None

    def prompt(self, start: int = 0) -> Prompt:
        """The backend's view of the state (of the pieces from `start` on)."""
        segments: list[Segment] = []
        contents: list[Part] = []
        current: int | None = None
        role = ""

        def flush() -> None:
            if current is not None:
                segments.append(Message(role, contents))
                contents.clear()

        for piece in self.pieces[start:]:
            if piece.message != current:
                flush()
                current, role = piece.message, piece.role or ""
            if piece.image is not None and current is None:
                segments.append(Image(piece.image))
            elif current is None:
                if segments and isinstance(segments[-1], Text):
                    segments[-1] = Text(segments[-1].text + piece.text)
                else:
                    segments.append(Text(piece.text))
            elif piece.image is not None:
                contents.append(Image(piece.image))
            elif piece.tool_part is not None:
                contents.append(piece.tool_part)
            else:
                contents.append(piece.text)
        flush()
        return Prompt(tuple(segments), self.open_role)

    def text(self, start: int = 0) -> str:
        """The state's text as a plain-text rendering (roles as `Role: content` lines)."""
        return self.prompt(start).plain_text()

    def messages(self) -> list[dict[str, Any]]:
        """The role messages, each a dict with `role` and `content` (its text; images left out)."""
        return [
            {"role": seg.role, "content": seg.text}
            for seg in self.prompt().segments
            if isinstance(seg, Message)
        ]
