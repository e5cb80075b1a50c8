"""Prompts as chat turns, for the API backends (`openai`, `anthropic`, `gemini`).

How a prompt that mixes free text and messages is sent to a chat API:

- each message is a turn of its role; free text and images outside messages are `user`
  content; consecutive pieces of the same role are one turn (chat APIs want roles to
  alternate), each piece kept as its own content block;
- an open assistant message (`gen` inside `assistant:`) is sent as a final, partial assistant
  turn that the model continues (a "prefill"); an empty one is the usual request for a new
  assistant message. Generating inside an open `user` or `system` message is an error;
- a prompt with no message at all is free text: completion APIs get it as is, chat-only APIs
  as one user turn.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sgl_lang.protocol import BackendError, Choices, Image, Message, Part, Prompt, Text

CHOICE_KEY = "choice"


@dataclass
class Turn:
    """One chat turn: its role and its content blocks (text pieces, images, tool calls and
    results, in order)."""

    role: str
    parts: list[Part] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(p for p in self.parts if isinstance(p, str))


class ChatPrompt(NamedTuple):
    turns: list[Turn]
    prefill: str  # the open assistant message's content: the reply continues it


def chat_turns(prompt: Prompt, api: str) -> ChatPrompt:
    """The prompt as turns (see the module docstring); `api` names the backend in errors."""
    segments = list(prompt.segments)
    prefill = ""
    if prompt.open_role is not None:
        if prompt.open_role != "assistant":
            raise BackendError(
                f"{api} can only generate assistant messages, not inside an open "
                f"`{prompt.open_role}` message"
            )
        last = segments[-1] if segments else None
        if isinstance(last, Message) and last.role == "assistant":
            prefill = last.text
            segments.pop()
    turns: list[Turn] = []
    for segment in segments:
        role = segment.role if isinstance(segment, Message) else "user"
        parts: tuple[Part, ...] = (
            segment.content
            if isinstance(segment, Message)
            else (segment.text,)
            if isinstance(segment, Text)
            else (segment,)
        )
        if not turns or turns[-1].role != role:
            turns.append(Turn(role))
        turns[-1].parts.extend(part for part in parts if part != "")
    if prefill and turns and turns[-1].role == "assistant":  # continue the whole turn
        prefill = turns.pop().text + prefill
    return ChatPrompt(turns, prefill)


def split_system(turns: list[Turn]) -> tuple[str, list[Turn]]:
    """All system turns' text (joined by blank lines), and the other turns."""
    system = "\n\n".join(t.text for t in turns if t.role == "system")
    return system, [t for t in turns if t.role != "system"]


# ---------------------------------------------------------------- images


def is_url(image: Image) -> bool:
    return isinstance(image.source, str) and image.source.startswith(("http://", "https://"))


def image_data(image: Image) -> tuple[bytes, str]:
    """The bytes and MIME type of an image given as a path or as bytes."""
    if isinstance(image.source, bytes):
        data = image.source
        return data, _sniff(data)
    path = Path(image.source).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read image `{image.source}`: {exc.strerror}") from None
    return data, mimetypes.guess_type(path.name)[0] or _sniff(data)


def image_mime(image: Image) -> str:
    if isinstance(image.source, str):
        return mimetypes.guess_type(image.source.split("?")[0])[0] or "image/jpeg"
    return _sniff(image.source)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"GIF8"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


# ---------------------------------------------------------------- choices and streaming


def choice_schema(choices: Choices) -> dict[str, Any]:
    """A JSON schema whose only valid documents are `{"choice": OPTION}`: how APIs with JSON
    schema outputs (but no choice constraint) enforce `choices`."""
    return {
        "type": "object",
        "properties": {CHOICE_KEY: {"type": "string", "enum": list(choices.options)}},
        "required": [CHOICE_KEY],
        "additionalProperties": False,
    }


def unwrap_choice(text: str) -> str:
    """The option in a `choice_schema` document (the text itself if it is not one)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value[CHOICE_KEY] if isinstance(value, dict) and CHOICE_KEY in value else text


class Output:
    """Collects streamed text: forwards pieces to `on_chunk` (unless `hold`, for output that
    is rewritten at the end), and drops the leading whitespace when `trim_start` (after a
    prefill whose trailing whitespace the API refused)."""

    def __init__(
        self,
        on_chunk: Callable[[str], None] | None,
        *,
        hold: bool = False,
        trim_start: bool = False,
    ) -> None:
        self.on_chunk = None if hold else on_chunk
        self.trim_start = trim_start
        self.parts: list[str] = []

    def add(self, piece: str | None) -> None:
        if not piece:
            return
        if self.trim_start:
            piece = piece.lstrip()
            if not piece:
                return
            self.trim_start = False
        self.parts.append(piece)
        if self.on_chunk is not None:
            self.on_chunk(piece)

    @property
    def text(self) -> str:
        return "".join(self.parts)
