"""The `openai:MODEL[@URL]` backend: OpenAI's API, or any OpenAI-compatible server (`sgl serve`'s
`/v1`, vLLM, SGLang) at URL, through the official `openai` SDK.

- Prompts with messages go to `/chat/completions` (see `chat.py` for free text between
  messages); an open assistant message with content is continued with the
  `continue_final_message` extension (vLLM, SGLang and `sgl serve`; OpenAI itself refuses it).
  Prompts without messages go to `/completions` as plain text.
- Enforced: `json` (`response_format` json_schema) and `choices` (a json_schema whose only
  documents are `{"choice": OPTION}`, unwrapped). `regex` is not enforced (the interpreter
  checks the output).
- `select` falls back to `gen choices=`, unless the URI ends with `?select=logprobs`: then
  each choice is scored from the log-probs the server gives the prompt's tokens (`echo` with
  `logprobs` and `max_tokens: 0` on `/completions`: `sgl serve`, vLLM), by the methods of the
  `local` backend; only prompts without messages can be scored this way.
- Tools are OpenAI's native `tools`/`tool_choice`; the streamed `tool_calls` deltas are
  assembled into `GenResult.tool_calls`; calls and results in the prompt are sent as an
  assistant message's `tool_calls` and `tool` messages.
- `top_k`, `min_p`, `ignore_eos` and `min_tokens` are sent only when set, as extensions.
- `logprobs=K`: `logprobs`/`top_logprobs` (chat) or `logprobs: K` (completions), read from
  the streamed chunks. `reasoning`: the `reasoning_content` that OpenAI-compatible servers
  (vLLM, SGLang, DeepSeek) stream apart, else a `<think>` block in the text; the answer is
  streamed at the end.
- The key is `$OPENAI_API_KEY` (required without URL); it is sent to a URL only when the user
  chose the URI (`--backend`), never to a URL a program wrote. The SDK retries rate limits
  and transient errors with backoff.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sgl_lang.backends.chat import (
    Output,
    Turn,
    chat_turns,
    choice_schema,
    image_data,
    is_url,
    unwrap_choice,
)
from sgl_lang.protocol import (
    SELECT_METHODS,
    Backend,
    BackendError,
    Capabilities,
    Choices,
    GenRequest,
    GenResult,
    Image,
    JsonSchema,
    Prompt,
    TokenLogprob,
    ToolCall,
    ToolResult,
    choice_scores,
    with_reasoning,
)

API_KEY_ENV = "OPENAI_API_KEY"
MAX_RETRIES = 3
TIMEOUT_S = 600.0
GEN_OPTIONS = frozenset({"logprobs", "reasoning", "min_tokens"})
CAPABILITIES = Capabilities(
    frozenset({"json", "choices"}), frozenset(), images=True, tools=True, gen_options=GEN_OPTIONS
)
SCORING_CAPABILITIES = Capabilities(
    CAPABILITIES.constraints,
    frozenset(SELECT_METHODS),
    images=True,
    tools=True,
    gen_options=GEN_OPTIONS,
)
SCORING_OPTION = "select=logprobs"
NEUTRAL_CONTEXT = "\n"  # what a choice follows when scored "without the prompt"


def create(target: str, *, user_chosen: bool = True) -> OpenAIBackend:
    """`MODEL` (OpenAI's API, needs $OPENAI_API_KEY) or `MODEL@URL` (any compatible server),
    optionally followed by `?select=logprobs`. $OPENAI_API_KEY goes to a URL only when the
    user chose it (`user_chosen`); a URL a program wrote gets no key."""
    target, _, option = target.partition("?")
    if option not in ("", SCORING_OPTION):
        raise BackendError(
            f"backend `openai:{target}?{option}`: unknown option `{option}` "
            f"(the one option is `?{SCORING_OPTION}`)"
        )
    model, _, url = target.partition("@")
    if not model:
        raise BackendError(f"backend `openai:{target}` needs a model: write `openai:MODEL`")
    if importlib.util.find_spec("openai") is None:
        raise BackendError(
            "the `openai:` backend needs the `openai` package: pip install 'sgl-lang[openai]'"
        )
    key = os.environ.get(API_KEY_ENV) if user_chosen or not url else None
    if not key and not url:
        raise BackendError(f"`openai:{model}` needs an API key: set ${API_KEY_ENV}")
    return OpenAIBackend(model, url or None, key or "no-key", scores=bool(option))


class OpenAIBackend(Backend):
    """Chat and completion requests through `openai.AsyncOpenAI` (opened on first use); with
    `scores`, `select` is scored from prompt log-probs. `client_options` go to the client
    (tests pass `http_client`)."""

    def __init__(
        self,
        model: str,
        url: str | None,
        api_key: str,
        *,
        scores: bool = False,
        **client_options: Any,
    ) -> None:
        self.name = f"openai:{model}" + (f"@{url}" if url else "")
        self.model, self.url = model, url
        self.capabilities = SCORING_CAPABILITIES if scores else CAPABILITIES
        self._options = {"api_key": api_key, "base_url": url, **client_options}
        self._client: Any = None

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        prompt = request.prompt
        chat = prompt.is_chat or prompt.open_role is not None
        choices = request.constraint if isinstance(request.constraint, Choices) else None
        output = Output(on_chunk, hold=choices is not None or request.reasoning)
        extras = _Extras(chat)
        kwargs = self._common(request)
        fields = self._chat_fields(request) if chat else self._completion_fields(request)
        kwargs["extra_body"].update(fields.pop("extra_body", {}))
        finish, usage = None, None
        calls = StreamedCalls()
        try:
            api = self._sdk().chat.completions if chat else self._sdk().completions
            stream = await api.create(**kwargs, **fields)
            async for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    output.add(choice.delta.content if chat else choice.text)
                    extras.add(choice)
                    calls.add(getattr(choice.delta, "tool_calls", None) if chat else None)
                    finish = choice.finish_reason or finish
        except BackendError:
            raise
        except Exception as exc:
            raise sdk_error(self.name, exc) from None
        text = output.text
        if choices is not None:
            text = unwrap_choice(text)
        result = _result(text, finish, usage, request, calls.finished(self.name))
        result = extras.into(result, request)
        if (choices is not None or request.reasoning) and on_chunk is not None and result.text:
            on_chunk(result.text)
        return result

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        """As the `local` backend scores: spaces ending the prompt move into the choices, and
        `unconditional` subtracts each choice's mean log-prob after `NEUTRAL_CONTEXT`."""
        if method not in self.capabilities.select_methods:
            raise BackendError(f"`{self.name}` cannot score choices")
        if prompt.is_chat or prompt.open_role is not None:
            raise BackendError(
                f"`{self.name}` scores `select` only after prompts without messages (sent to "
                f"/completions); drop `?{SCORING_OPTION}` to select by constrained generation"
            )
        text = prompt.plain_text()
        context = text.rstrip(" ")
        continuations = [text[len(context) :] + choice for choice in choices]
        contexts = [context or NEUTRAL_CONTEXT]
        if method == "unconditional":
            contexts.append(NEUTRAL_CONTEXT)
        logprobs = await asyncio.gather(
            *(self._logprobs(ctx, cont) for ctx in contexts for cont in continuations)
        )
        unconditional = logprobs[len(choices) :] if method == "unconditional" else None
        return choice_scores(method, logprobs[: len(choices)], unconditional)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _sdk(self) -> Any:
        if self._client is None:
            import openai

            options = {"max_retries": MAX_RETRIES, "timeout": TIMEOUT_S, **self._options}
            self._client = openai.AsyncOpenAI(**options)
        return self._client

    async def _logprobs(self, context: str, continuation: str) -> list[float]:
        """The log-probs of the tokens of `continuation` after `context`, from the server's
        echo of the whole text."""
        try:
            reply = await self._sdk().completions.create(
                model=self.model,
                prompt=context + continuation,
                max_tokens=0,
                echo=True,
                logprobs=1,
                temperature=0,
            )
        except Exception as exc:
            raise sdk_error(self.name, exc) from None
        echoed = reply.choices[0].logprobs if reply.choices else None
        tokens = getattr(echoed, "tokens", None) or []
        token_logprobs = getattr(echoed, "token_logprobs", None) or []
        picked = token_logprobs[_covering_start(tokens, len(continuation)) :]
        if not tokens or len(token_logprobs) != len(tokens) or None in picked:
            raise BackendError(
                f"{self.name}: the server gave no log-probs of the prompt's tokens (`echo` with "
                f"`logprobs` on /completions); drop `?{SCORING_OPTION}` to select by "
                "constrained generation"
            )
        return [float(logprob) for logprob in picked]

    def _common(self, request: GenRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.frequency_penalty:
            kwargs["frequency_penalty"] = request.frequency_penalty
        if request.presence_penalty:
            kwargs["presence_penalty"] = request.presence_penalty
        extra = {
            "top_k": request.top_k,
            "min_p": request.min_p,
            "ignore_eos": request.ignore_eos,
            "min_tokens": request.min_tokens,
        }
        kwargs["extra_body"] = {name: value for name, value in extra.items() if value}
        return kwargs

    def _chat_fields(self, request: GenRequest) -> dict[str, Any]:
        turns, prefill = chat_turns(request.prompt, self.name)
        messages = [message for turn in turns for message in _messages(turn)]
        fields: dict[str, Any] = {"max_completion_tokens": request.max_tokens}
        if request.tools:
            fields["tools"] = [tool.as_openai() for tool in request.tools]
            fields["tool_choice"] = request.tool_choice
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
            fields["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        fields["messages"] = messages
        if request.logprobs is not None:
            fields.update(logprobs=True, top_logprobs=request.logprobs)
        constraint = request.constraint
        spec: dict[str, Any]
        if isinstance(constraint, JsonSchema):
            spec = {"name": "output", "schema": constraint.schema}
            fields["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif isinstance(constraint, Choices):
            spec = {"name": "choice", "schema": choice_schema(constraint), "strict": True}
            fields["response_format"] = {"type": "json_schema", "json_schema": spec}
        return fields

    def _completion_fields(self, request: GenRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "prompt": request.prompt.plain_text(),
            "max_tokens": request.max_tokens,
        }
        if request.logprobs is not None:
            fields["logprobs"] = request.logprobs
        constraint = request.constraint
        if isinstance(constraint, JsonSchema):  # the completions API has no response_format
            fields["extra_body"] = {"guided_json": constraint.schema}
        elif isinstance(constraint, Choices):
            fields["extra_body"] = {"guided_choice": list(constraint.options)}
        return fields


class _Extras:
    """What the streamed choices carry besides the text: token log-probs and the reasoning."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.logprobs: list[TokenLogprob] = []
        self.reasoning: list[str] = []

    def add(self, choice: Any) -> None:
        logprobs = getattr(choice, "logprobs", None)
        if self.chat:
            for item in getattr(logprobs, "content", None) or ():
                top = tuple((alt.token, alt.logprob) for alt in item.top_logprobs or ())
                self.logprobs.append(TokenLogprob(item.token, item.logprob, top))
            extra = getattr(choice.delta, "model_extra", None) or {}
            self.reasoning.append(extra.get("reasoning_content") or "")
        elif logprobs is not None:
            tokens = logprobs.tokens or []
            tops = logprobs.top_logprobs or [{}] * len(tokens)
            for token, logprob, top in zip(
                tokens, logprobs.token_logprobs or [], tops, strict=False
            ):
                alternatives = sorted((top or {}).items(), key=lambda item: -item[1])
                self.logprobs.append(TokenLogprob(token, logprob, tuple(alternatives)))

    def into(self, result: GenResult, request: GenRequest) -> GenResult:
        """`result` with what was asked for: log-probs, and the reasoning (the server's
        field, else a `<think>` block of the text)."""
        if request.logprobs is not None:
            result = replace(result, logprobs=tuple(self.logprobs))
        if not request.reasoning:
            return result
        if reasoning := "".join(self.reasoning):
            return replace(result, reasoning=reasoning)
        return with_reasoning(result)


def _messages(turn: Turn) -> list[dict[str, Any]]:
    """A turn as chat messages: one per tool result in a `tool` turn, else one (an assistant's
    tool calls in `tool_calls`, text and images as content parts)."""
    results = [part for part in turn.parts if isinstance(part, ToolResult)]
    if results:
        return [
            {"role": "tool", "tool_call_id": result.call_id, "content": result.content}
            for result in results
        ]
    calls = [part for part in turn.parts if isinstance(part, ToolCall)]
    if calls:
        return [
            {
                "role": turn.role,
                "content": turn.text or None,
                "tool_calls": [_wire_call(call) for call in calls],
            }
        ]
    if not any(isinstance(part, Image) for part in turn.parts):
        return [{"role": turn.role, "content": turn.text}]
    content: list[dict[str, Any]] = []
    for part in turn.parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        elif isinstance(part, Image):
            content.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
    return [{"role": turn.role, "content": content}]


def _wire_call(call: ToolCall) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


class StreamedCalls:
    """Tool calls assembled from streamed deltas (by index: an id and name first, then the
    arguments' JSON text in pieces)."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, str]] = {}

    def add(self, deltas: Any) -> None:
        for delta in deltas or ():
            part = self.parts.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            function = delta.function
            part["id"] = delta.id or part["id"]
            part["name"] = (function.name if function else None) or part["name"]
            part["arguments"] += (function.arguments if function else None) or ""

    def finished(self, api: str) -> tuple[ToolCall, ...]:
        calls = []
        for index in sorted(self.parts):
            part = self.parts[index]
            try:
                arguments = json.loads(part["arguments"] or "{}")
            except json.JSONDecodeError:
                raise BackendError(f"{api}: a tool call's arguments are not JSON") from None
            if not isinstance(arguments, dict):
                raise BackendError(f"{api}: a tool call's arguments are not a JSON object")
            calls.append(ToolCall(part["id"], part["name"], arguments))
        return tuple(calls)


def _image_url(image: Image) -> str:
    if is_url(image):
        return str(image.source)
    import base64

    data, mime = image_data(image)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _result(
    text: str,
    finish: str | None,
    usage: Any,
    request: GenRequest,
    tool_calls: tuple[ToolCall, ...] = (),
) -> GenResult:
    """OpenAI's finish reason "stop" covers stop strings and the end of the turn: it counts as
    a stop string when the request had some."""
    reason = "length" if finish == "length" else "stop" if request.stop else "eos"
    reason = "tool_calls" if tool_calls else reason
    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    completion_tokens = getattr(usage, "completion_tokens", 0) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached_tokens = getattr(details, "cached_tokens", 0) or 0
    return GenResult(
        text, reason, prompt_tokens, completion_tokens, cached_tokens, tool_calls=tool_calls
    )


def _covering_start(tokens: Sequence[str], num_chars: int) -> int:
    """Where the last tokens that cover the text's last `num_chars` characters start (a token
    across the boundary counts: its log-prob is the choice's)."""
    start, num_covered = len(tokens), 0
    while start > 0 and num_covered < num_chars:
        start -= 1
        num_covered += len(tokens[start])
    return start


def sdk_error(name: str, exc: Exception) -> BackendError:
    """A plain message for an SDK exception: the HTTP status and the server's message."""
    status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message", message) if isinstance(inner, dict) else message
    if isinstance(status, int):
        return BackendError(f"{name}: the API answered {status}: {message}")
    return BackendError(f"{name}: {message}")
