"""Tool calls on the local engine, grammar-constrained: the tools are listed in the system
message, and the output is held to `protocol.tool_output_schema` (a call of a listed tool with
arguments valid for its schema, or the answer), so even a small model cannot write a
malformed call. The output is read back into a `GenResult` with `tool_calls` or the answer; a
call cut short by `max_tokens` is an error, never a malformed call."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import replace

from sgl_lang.protocol import (
    BackendError,
    GenRequest,
    GenResult,
    JsonSchema,
    Message,
    Prompt,
    read_tool_output,
    tool_output_schema,
    tools_instruction,
)

_call_ids = itertools.count(1)
Generate = Callable[[GenRequest, Callable[[str], None] | None], Awaitable[GenResult]]


def constrained_request(request: GenRequest) -> GenRequest:
    """`request` as the engine runs it: the tools described in the (first) system message,
    the output constrained to the tool-call form, no stop strings (they would cut the JSON)."""
    instruction = tools_instruction(request.tools, request.tool_choice)
    segments = list(request.prompt.segments)
    first = segments[0] if segments else None
    if isinstance(first, Message) and first.role == "system":
        segments[0] = Message("system", [*first.content, "\n\n" + instruction])
    else:
        segments.insert(0, Message("system", instruction))
    schema = tool_output_schema(request.tools, request.tool_choice)
    return replace(
        request,
        prompt=Prompt(tuple(segments), request.prompt.open_role),
        constraint=JsonSchema(schema),
        stop=(),
        tools=(),
    )


async def generate_with_tools(
    generate: Generate, request: GenRequest, on_chunk: Callable[[str], None] | None
) -> GenResult:
    """Run `request` (which has tools) constrained; the answer is streamed once it is known."""
    result = await generate(constrained_request(request), None)
    output = read_tool_output(result.text, f"call_{next(_call_ids)}")
    if output.cut_call:
        raise BackendError(
            f"local model: the tool call was cut at max_tokens ({request.max_tokens}) before "
            "it was complete: raise max_tokens"
        )
    if output.call is not None:
        return replace(result, text="", finish_reason="tool_calls", tool_calls=(output.call,))
    if on_chunk is not None and output.answer:
        on_chunk(output.answer)
    # The form's grammar ends where the answer does: the model ended its turn.
    reason = "length" if result.finish_reason == "length" else "eos"
    return replace(result, text=output.answer, finish_reason=reason)
