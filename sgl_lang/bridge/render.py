"""Prompts as the model reads them: one text (through the chat template), then token ids.

- free `Text` is sent as is (completion style);
- runs of `Message`s go through the tokenizer's chat template (or `Prompt.plain_text()` when
  the model has none). Text between messages is placed between their renderings: each run is
  what the template adds for it over the messages before it. The template is followed exactly,
  so SmolLM2's injects its default system prompt ("You are a helpful AI assistant named
  SmolLM, ...") when the program has no system message: that is what the model was trained on;
- an open message (`Prompt.open_role`) is rendered closed and cut right after its content, so
  generation continues it (for an empty assistant message this is the generation prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sgl_lang.protocol import BackendError, Image, Message, Prompt, Text, ToolCall

if TYPE_CHECKING:
    from sgl_lang.runtime.engine import Engine

OPEN_MARK = "\x00sgl-open-message\x00"  # stands for "the open message continues here"


class Rendered(NamedTuple):
    """A prompt as the model reads it. `ends_with_content`: it ends in the program's own text
    (free text, or an open message's content), not in template markup."""

    text: str
    is_chat: bool
    ends_with_content: bool


def render_prompt(tokenizer: Any, prompt: Prompt) -> Rendered:
    """The prompt's text for `tokenizer`'s model (see the module docstring)."""
    segments = list(prompt.segments)
    if any(isinstance(s, Image) or (isinstance(s, Message) and s.images) for s in segments):
        raise BackendError("the local model cannot see images")
    open_message: Message | None = None
    if prompt.open_role is not None:
        last = segments[-1] if segments else None
        if isinstance(last, Message) and last.role == prompt.open_role:
            open_message = last
            segments.pop()
        else:
            open_message = Message(prompt.open_role, "")
    if open_message is not None:
        ends_with_content = bool(open_message.text)
    else:
        last = segments[-1] if segments else None
        ends_with_content = isinstance(last, Text) and bool(last.text)
    is_chat = open_message is not None or prompt.is_chat
    if not is_chat:
        text = "".join(s.text for s in segments if isinstance(s, Text))
        return Rendered(text, False, ends_with_content)
    if getattr(tokenizer, "chat_template", None) is None:
        return Rendered(prompt.plain_text(), True, ends_with_content)

    parts: list[str] = []
    messages: list[dict[str, Any]] = []
    num_rendered, rendered = 0, ""  # the template's rendering of messages[:num_rendered]
    for segment in segments:
        if isinstance(segment, Message):
            messages.append(_message_dict(tokenizer, segment))
        elif isinstance(segment, Text):
            if len(messages) > num_rendered:
                full = _apply_template(tokenizer, messages)
                parts.append(_after(full, rendered))
                num_rendered, rendered = len(messages), full
            parts.append(segment.text)
    if open_message is not None:
        content = open_message.text + OPEN_MARK
        full = _apply_template(
            tokenizer, [*messages, {"role": open_message.role, "content": content}]
        )
        if OPEN_MARK not in full:
            raise BackendError("the local model's chat template drops message content")
        parts.append(_after(full[: full.rindex(OPEN_MARK)], rendered))
    elif len(messages) > num_rendered:
        parts.append(_after(_apply_template(tokenizer, messages), rendered))
    return Rendered("".join(parts), True, ends_with_content)


def encode(engine: Engine, rendered: Rendered) -> list[int]:
    """Token ids of a rendered prompt for `engine`'s tokenizer (`encode_ids`)."""
    return encode_ids(engine.tokenizer, rendered)


def encode_ids(tokenizer: Any, rendered: Rendered) -> list[int]:
    """Token ids of a rendered prompt (a chat template writes its own special tokens); an
    empty prompt is the BOS token, or EOS for models without one."""
    ids: list[int] = tokenizer.encode(rendered.text, add_special_tokens=not rendered.is_chat)
    return ids or neutral_ids(tokenizer)


def neutral_ids(tokenizer: Any) -> list[int]:
    """The BOS token, or EOS for models without one: the prompt of no prompt."""
    bos = tokenizer.bos_token_id
    return [tokenizer.eos_token_id if bos is None else bos]


def score_split(
    tokenizer: Any, prompt: Prompt, choices: Sequence[str]
) -> tuple[list[int], Sequence[str]]:
    """The prefix ids of `select` and its choices, split as the model would write them: a
    trailing space of the prompt's own text moves into the choices ("Answer: " + "yes"
    scores as "Answer:" + " yes")."""
    rendered = render_prompt(tokenizer, prompt)
    if rendered.ends_with_content:
        text = rendered.text.rstrip(" ")
        space = rendered.text[len(text) :]
        rendered, choices = rendered._replace(text=text), [space + c for c in choices]
    ids = tokenizer.encode(rendered.text, add_special_tokens=not rendered.is_chat)
    return ids, choices


def _message_dict(tokenizer: Any, message: Message) -> dict[str, Any]:
    """A message for the chat template. Tool calls and results go in the template's own
    fields (`tool_calls`, `tool_call_id`) when it has them; otherwise a call is written in its
    constrained form (`ToolCall.as_json`, what the model wrote) and a result as its text, in a
    message of role `tool`."""
    content = "".join(
        part.as_json() if isinstance(part, ToolCall) else part
        for part in message.content
        if isinstance(part, (str, ToolCall))
    )
    results = message.tool_results
    if results:
        content = "\n".join(result.content for result in results)
    if "tool_calls" not in (tokenizer.chat_template or ""):
        return {"role": message.role, "content": content}
    if results:
        return {"role": "tool", "content": content, "tool_call_id": results[0].call_id}
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in message.tool_calls
    ]
    if calls:
        return {"role": message.role, "content": message.text, "tool_calls": calls}
    return {"role": message.role, "content": content}


def _apply_template(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception as exc:  # jinja's TemplateError, or a template's raise_exception()
        raise BackendError(f"the local model's chat template failed: {exc}") from None


def _after(full: str, rendered: str) -> str:
    """What `full` adds after `rendered` (the rendering of fewer messages)."""
    if not full.startswith(rendered):
        raise BackendError(
            "the local model's chat template renders earlier messages differently when more "
            "follow, so text cannot be placed between messages"
        )
    return full[len(rendered) :]
