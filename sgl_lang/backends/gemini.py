"""The `gemini:MODEL` backend: Google's Gemini API through the official `google-genai` SDK.

- Messages map as in `chat.py`: `assistant` is Gemini's `model` role, all system messages
  become `system_instruction`, images are inline bytes or URIs. An open assistant message
  is sent as a final, partial `model` turn.
- Enforced: `json` (`response_mime_type` application/json + `response_json_schema`) and
  `choices` (Gemini's enum output, `text/x.enum`). `regex` is checked afterwards; `select`
  falls back to `gen choices=`.
- Tools are native function declarations (`parameters_json_schema`; `tool_config` mode AUTO,
  ANY or NONE; the SDK's automatic calling off): streamed `function_call` parts become
  `GenResult.tool_calls`; calls and results in the prompt are `function_call` parts of a
  model turn and `function_response` parts (`{"result": TEXT}`) of a user turn.
- Gemini caches repeated prefixes implicitly; `cached_tokens` reports its hits.
- `reasoning`: thinking with its thoughts included (`thinking_config`, the budget is
  `reasoning_budget` when given); the thought parts become `GenResult.reasoning`.
- The key is `$GEMINI_API_KEY` (or `$GOOGLE_API_KEY`); the SDK retries rate limits and
  transient errors with backoff.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

from sgl_lang.backends.chat import Output, chat_turns, image_data, image_mime, is_url, split_system
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
)

API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
NUM_ATTEMPTS = 4
TIMEOUT_MS = 600_000
CAPABILITIES = Capabilities(
    frozenset({"json", "choices"}),
    frozenset(),
    images=True,
    tools=True,
    gen_options=frozenset({"reasoning"}),
)
FINISH_REASONS = {"STOP": "eos", "MAX_TOKENS": "length"}


def create(target: str) -> GeminiBackend:
    if importlib.util.find_spec("google.genai") is None:
        raise BackendError(
            "the `gemini:` backend needs the `google-genai` package: pip install 'sgl-lang[gemini]'"
        )
    key = next((k for env in API_KEY_ENVS if (k := os.environ.get(env))), None)
    if not key:
        raise BackendError(f"`gemini:{target}` needs an API key: set ${API_KEY_ENVS[0]}")
    return GeminiBackend(target, key)


class GeminiBackend(Backend):
    """Streamed `generate_content` calls through `google.genai.Client` (opened on first use).
    `http_options` go to the client (tests pass a base URL or an httpx client)."""

    def __init__(self, model: str, api_key: str, **http_options: Any) -> None:
        self.name = f"gemini:{model}"
        self.model = model
        self.capabilities = CAPABILITIES
        self._api_key = api_key
        self._http_options = http_options
        self._client: Any = None

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        contents, config = self.request_fields(request)
        output = Output(on_chunk)
        thoughts: list[str] = []
        reason, usage = "eos", None
        calls: list[ToolCall] = []
        try:
            stream = await self._sdk().aio.models.generate_content_stream(
                model=self.model, contents=contents, config=config
            )
            async for response in stream:
                usage = response.usage_metadata or usage
                for candidate in response.candidates or ():
                    for part in (candidate.content.parts or ()) if candidate.content else ():
                        if part.text and not part.thought:
                            output.add(part.text)
                        elif part.text:
                            thoughts.append(part.text)
                        if part.function_call is not None:
                            calls.append(_tool_call(part.function_call, len(calls)))
                    if candidate.finish_reason is not None:
                        name = getattr(candidate.finish_reason, "value", candidate.finish_reason)
                        reason = FINISH_REASONS.get(str(name), "eos")
        except Exception as exc:
            raise sdk_error(self.name, exc) from None
        if reason == "eos" and request.stop:
            reason = "stop"  # Gemini reports a stop sequence as STOP too
        prompt_tokens = getattr(usage, "prompt_token_count", 0) or 0
        completion_tokens = getattr(usage, "candidates_token_count", 0) or 0
        cached_tokens = getattr(usage, "cached_content_token_count", 0) or 0
        reasoning = "".join(thoughts) if request.reasoning else None
        return GenResult(
            output.text,
            "tool_calls" if calls else reason,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            reasoning=reasoning,
            tool_calls=tuple(calls),
        )

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        raise BackendError(f"`{self.name}` cannot score choices")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aio.aclose()

    def _sdk(self) -> Any:
        if self._client is None:
            from google import genai
            from google.genai import types

            options = types.HttpOptions(
                timeout=TIMEOUT_MS,
                retry_options=types.HttpRetryOptions(attempts=NUM_ATTEMPTS),
                **self._http_options,
            )
            self._client = genai.Client(api_key=self._api_key, http_options=options)
        return self._client

    def request_fields(self, request: GenRequest) -> tuple[list[Any], Any]:
        """The `contents` and the `GenerateContentConfig` of a request."""
        from google.genai import types

        turns, prefill = chat_turns(request.prompt, self.name)
        system, turns = split_system(turns)
        contents = [
            types.Content(role=_ROLE[t.role], parts=[_part(p) for p in t.parts])
            for t in turns
            if t.parts
        ]
        if prefill:
            contents.append(types.Content(role="model", parts=[types.Part(text=prefill)]))
        config: dict[str, Any] = {
            "max_output_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if system:
            config["system_instruction"] = system
        if request.stop:
            config["stop_sequences"] = list(request.stop)
        if request.top_k:
            config["top_k"] = request.top_k
        if request.seed is not None:
            config["seed"] = request.seed
        if request.frequency_penalty:
            config["frequency_penalty"] = request.frequency_penalty
        if request.presence_penalty:
            config["presence_penalty"] = request.presence_penalty
        if request.reasoning:
            thinking = {"include_thoughts": True, "thinking_budget": request.reasoning_budget}
            config["thinking_config"] = {k: v for k, v in thinking.items() if v is not None}
        if request.tools:
            declarations = [
                types.FunctionDeclaration(
                    name=tool.name,
                    description=tool.description,
                    parameters_json_schema=tool.parameters,
                )
                for tool in request.tools
            ]
            config["tools"] = [types.Tool(function_declarations=declarations)]
            mode = types.FunctionCallingConfigMode(TOOL_MODES[request.tool_choice])
            config["tool_config"] = types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(mode=mode)
            )
            config["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(
                disable=True
            )
        constraint = request.constraint
        if isinstance(constraint, JsonSchema):
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = constraint.schema
        elif isinstance(constraint, Choices):
            config["response_mime_type"] = "text/x.enum"
            config["response_schema"] = {"type": "STRING", "enum": list(constraint.options)}
        return contents, types.GenerateContentConfig(**config)


_ROLE = {"user": "user", "assistant": "model", "tool": "user"}
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _tool_call(call: Any, index: int) -> ToolCall:
    """A streamed `function_call` (Gemini may give no id: then one from its position)."""
    return ToolCall(call.id or f"call_{index}", call.name or "", dict(call.args or {}))


def _part(part: Part) -> Any:
    from google.genai import types

    if isinstance(part, str):
        return types.Part(text=part)
    if isinstance(part, ToolCall):
        call = types.FunctionCall(id=part.id, name=part.name, args=part.arguments)
        return types.Part(function_call=call)
    if isinstance(part, ToolResult):
        response = types.FunctionResponse(
            id=part.call_id, name=part.name, response={"result": part.content}
        )
        return types.Part(function_response=response)
    if is_url(part):
        return types.Part.from_uri(file_uri=str(part.source), mime_type=image_mime(part))
    data, mime = image_data(part)
    return types.Part.from_bytes(data=data, mime_type=mime)
