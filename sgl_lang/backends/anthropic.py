"""The `anthropic:MODEL` backend: Anthropic's Messages API through the official `anthropic` SDK.

- Messages map as in `chat.py`; all system messages become the `system` parameter; each
  prompt piece is its own content block; images are sent as base64 or URL sources.
- An open assistant message is a prefill (the model continues it). The API refuses trailing
  whitespace there, so it is cut and the reply's leading whitespace dropped.
- Prompt caching is on: the prompt's last block carries `cache_control` (ephemeral), so the
  prefix shared by a fork's branches is written once and read by the others; `cache_prefix`
  pre-warms it (`max_tokens=0`) when the prompt is long enough to be cached.
- Enforced: `json` and `choices` (structured outputs, `output_config.format`; choices as a
  `{"choice": OPTION}` schema, unwrapped). `regex` is checked afterwards; `select` falls back.
- Tools are native: `tools` (`input_schema`), `tool_choice` (auto / any / none); streamed
  `tool_use` blocks become `GenResult.tool_calls`; calls and results in the prompt are
  `tool_use` blocks and `tool_result` blocks of a user turn.
- Only `max_tokens` and `stop` are sent: the Messages API in this SDK takes no sampling knobs.
- `reasoning` turns extended thinking on (`thinking`, with `reasoning_budget` or
  `THINKING_BUDGET` tokens, added to `max_tokens` so the answer keeps its own); the thinking
  deltas become `GenResult.reasoning`. The API refuses it with a prefilled assistant message.
- The key is `$ANTHROPIC_API_KEY` (`$ANTHROPIC_BASE_URL` moves the endpoint); the SDK
  retries rate limits and transient errors with backoff.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from sgl_lang.backends.chat import (
    Output,
    chat_turns,
    choice_schema,
    image_data,
    image_mime,
    is_url,
    split_system,
    unwrap_choice,
)
from sgl_lang.backends.openai import sdk_error
from sgl_lang.protocol import (
    Backend,
    BackendError,
    Capabilities,
    Choices,
    GenRequest,
    GenResult,
    JsonSchema,
    Part,
    Prompt,
    ToolCall,
    ToolResult,
    ToolSpec,
)

API_KEY_ENV = "ANTHROPIC_API_KEY"
MAX_RETRIES = 3
TIMEOUT_S = 600.0
MIN_CACHED_CHARS = 4096  # ~1024 tokens, the smallest prefix the API caches
CACHE_CONTROL = {"type": "ephemeral"}
THINKING_BUDGET = 1024  # the API's smallest budget
CAPABILITIES = Capabilities(
    frozenset({"json", "choices"}),
    frozenset(),
    images=True,
    tools=True,
    gen_options=frozenset({"reasoning"}),
)
TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}
ROLES = {"tool": "user"}  # tool results are `tool_result` blocks of a user turn
STOP_REASONS = {"end_turn": "eos", "stop_sequence": "stop", "max_tokens": "length"}


def create(target: str) -> AnthropicBackend:
    if importlib.util.find_spec("anthropic") is None:
        raise BackendError(
            "the `anthropic:` backend needs the `anthropic` package: "
            "pip install 'sgl-lang[anthropic]'"
        )
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise BackendError(f"`anthropic:{target}` needs an API key: set ${API_KEY_ENV}")
    return AnthropicBackend(target, key)


class AnthropicBackend(Backend):
    """Streamed Messages API calls through `anthropic.AsyncAnthropic` (opened on first use).
    `client_options` go to the client (tests pass `http_client` or `base_url`)."""

    def __init__(self, model: str, api_key: str, **client_options: Any) -> None:
        self.name = f"anthropic:{model}"
        self.model = model
        self.capabilities = CAPABILITIES
        self._options = {"api_key": api_key, **client_options}
        self._client: Any = None

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        kwargs, trimmed = self.request_fields(request.prompt, request.max_tokens)
        if request.reasoning:
            budget = max(request.reasoning_budget or THINKING_BUDGET, THINKING_BUDGET)
            kwargs["thinking"] = {"type": "enabled", "budget_tokens": budget}
            kwargs["max_tokens"] += budget
        thinking: list[str] = []
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        constraint = request.constraint
        if isinstance(constraint, JsonSchema):
            kwargs["output_config"] = {
                "format": {"type": "json_schema", "schema": constraint.schema}
            }
        elif isinstance(constraint, Choices):
            kwargs["output_config"] = {
                "format": {"type": "json_schema", "schema": choice_schema(constraint)}
            }
        if request.tools:
            kwargs["tools"] = [_tool(tool) for tool in request.tools]
            kwargs["tool_choice"] = {"type": TOOL_CHOICE[request.tool_choice]}
        output = Output(on_chunk, hold=isinstance(constraint, Choices), trim_start=trimmed)
        reason, usage = "eos", {"input_tokens": 0, "output_tokens": 0, "cache_read": 0}
        calls: list[dict[str, Any]] = []  # tool_use blocks: id, name and the input's JSON text
        try:
            stream = await self._sdk().messages.create(**kwargs, stream=True)
            async for event in stream:
                if event.type == "message_start":
                    u = event.message.usage
                    usage["cache_read"] = u.cache_read_input_tokens or 0
                    usage["input_tokens"] = (
                        u.input_tokens + usage["cache_read"] + (u.cache_creation_input_tokens or 0)
                    )
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    output.add(event.delta.text)
                elif event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                    thinking.append(event.delta.thinking)
                elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                    block = event.content_block
                    calls.append({"id": block.id, "name": block.name, "input": ""})
                elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    calls[-1]["input"] += event.delta.partial_json
                elif event.type == "message_delta":
                    reason = STOP_REASONS.get(event.delta.stop_reason or "", "eos")
                    usage["output_tokens"] = event.usage.output_tokens
        except Exception as exc:
            raise sdk_error(self.name, exc) from None
        text = output.text
        if isinstance(constraint, Choices):
            text = unwrap_choice(text)
            if on_chunk is not None and text:
                on_chunk(text)
        reasoning = "".join(thinking) if request.reasoning else None
        tool_calls = tuple(_tool_call(call, self.name) for call in calls)
        return GenResult(
            text,
            "tool_calls" if tool_calls else reason,
            usage["input_tokens"],
            usage["output_tokens"],
            usage["cache_read"],
            reasoning=reasoning,
            tool_calls=tool_calls,
        )

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        raise BackendError(f"`{self.name}` cannot score choices")

    async def cache_prefix(self, prompt: Prompt) -> None:
        """Pre-warm the prompt cache for a fork's shared prefix (a hint: failures are ignored)."""
        if len(prompt.plain_text()) < MIN_CACHED_CHARS:
            return
        try:
            kwargs, _ = self.request_fields(Prompt(prompt.segments), 0)
            await self._sdk().messages.create(**kwargs)
        except Exception:
            return

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _sdk(self) -> Any:
        if self._client is None:
            import anthropic

            options = {"max_retries": MAX_RETRIES, "timeout": TIMEOUT_S, **self._options}
            self._client = anthropic.AsyncAnthropic(**options)
        return self._client

    def request_fields(self, prompt: Prompt, max_tokens: int) -> tuple[dict[str, Any], bool]:
        """`model`, `max_tokens`, `system` and `messages` (with the cache breakpoint and the
        prefill); True when the prefill's trailing whitespace was cut."""
        turns, prefill = chat_turns(prompt, self.name)
        system, turns = split_system(turns)
        messages: list[dict[str, Any]] = [
            {"role": ROLES.get(t.role, t.role), "content": [_block(p) for p in t.parts]}
            for t in turns
            if t.parts
        ]
        if messages:
            messages[-1]["content"][-1]["cache_control"] = CACHE_CONTROL
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens}
        if system:
            block = {"type": "text", "text": system}
            kwargs["system"] = [
                {**block, "cache_control": CACHE_CONTROL} if not messages else block
            ]
        cut = prefill.rstrip()
        if cut:
            messages.append({"role": "assistant", "content": cut})
        kwargs["messages"] = messages
        return kwargs, cut != prefill


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}


def _tool_call(call: dict[str, Any], api: str) -> ToolCall:
    try:
        arguments = json.loads(call["input"] or "{}")
    except json.JSONDecodeError:
        raise BackendError(f"{api}: a tool call's input is not JSON") from None
    return ToolCall(call["id"], call["name"], arguments if isinstance(arguments, dict) else {})


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
    if isinstance(part, ToolResult):
        return {"type": "tool_result", "tool_use_id": part.call_id, "content": part.content}
    if is_url(part):
        return {"type": "image", "source": {"type": "url", "url": part.source}}
    data, mime = image_data(part)
    source = {
        "type": "base64",
        "media_type": mime or image_mime(part),
        "data": base64.b64encode(data).decode(),
    }
    return {"type": "image", "source": source}
