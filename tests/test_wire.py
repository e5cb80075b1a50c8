"""The wire JSON of prompts, requests and results (`sgl_lang.protocol.wire`): what the `http`
backend writes, `sgl serve` reads back unchanged, through real JSON text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sgl_lang.protocol import (
    Choices,
    Constraint,
    GenRequest,
    GenResult,
    Image,
    JsonSchema,
    Message,
    Prompt,
    Regex,
    Text,
    ToolCall,
    ToolResult,
    ToolSpec,
)
from sgl_lang.protocol.wire import (
    prompt_from_json,
    prompt_to_json,
    request_from_json,
    request_to_json,
    result_from_json,
    result_to_json,
)


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


@pytest.mark.parametrize(
    "prompt",
    [
        Prompt((Text("Q: 2 + 2 =\nA:"),)),
        Prompt((Message("system", "Be brief."), Text("[note]"), Message("user", "Hi"))),
        Prompt((Message("user", "Hi"), Message("assistant", "Hello, I am")), "assistant"),
        Prompt((Message("user", "Hi"),), "assistant"),  # an empty open message
        Prompt((Image("cat.png"), Image(b"\x89PNG\x00")), "user"),
        Prompt((Message("user", ["Look: ", Image(b"\x89PNG"), " and ", Image("x.png")]),)),
        Prompt(
            (
                Message("assistant", ["Let me add.", ToolCall("c1", "add", {"a": 2})]),
                Message("tool", [ToolResult("c1", "add", "2")]),
            ),
            "assistant",
        ),
    ],
)
def test_prompts_round_trip(prompt: Prompt) -> None:
    assert prompt_from_json(through_json(prompt_to_json(prompt))) == prompt


@pytest.mark.parametrize(
    "constraint",
    [
        None,
        Regex("[0-9]+"),
        JsonSchema({"type": "object", "properties": {"b": {}, "a": {"type": "integer"}}}),
        Choices(("yes", "no")),
    ],
)
def test_requests_round_trip_with_each_constraint(constraint: Constraint | None) -> None:
    prompt = Prompt((Message("user", "Name a number."),), "assistant")
    request = GenRequest(
        prompt,
        max_tokens=7,
        stop=("\n", "."),
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.1,
        frequency_penalty=0.2,
        presence_penalty=0.3,
        seed=11,
        ignore_eos=True,
        heal=False,
        constraint=constraint,
    )
    body = through_json(request_to_json(request))
    assert request_from_json(prompt_from_json(body["prompt"]), body["sampling_params"]) == request


def test_requests_read_sglang_conventions_and_defaults() -> None:
    prompt = Prompt((Text("a"),))
    params = {"stop": "\n", "top_k": -1, "sampling_seed": 3, "temperature": None}
    assert request_from_json(prompt, params, heal=False) == GenRequest(
        prompt, stop=("\n",), seed=3, heal=False
    )
    assert request_from_json(prompt, {"json_schema": {"type": "string"}}).constraint == (
        JsonSchema({"type": "string"})
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"regex": "a", "choices": ["a"]}, "give at most one output constraint"),
        ({"json_schema": "{"}, "`json_schema` is not JSON"),
        ({"json_schema": "[1]"}, "`json_schema` must be a JSON object"),
    ],
)
def test_bad_constraints_are_value_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        request_from_json(Prompt(()), params)


def test_tools_round_trip_in_requests_and_results() -> None:
    tools = (ToolSpec("add", "Add.", {"type": "object", "properties": {"a": {}}}),)
    request = GenRequest(Prompt((Message("user", "2+2?"),), "assistant"), tools=tools)
    data = through_json(request_to_json(request))
    assert data["sampling_params"]["tools"] == [tools[0].as_openai()]
    assert request_from_json(prompt_from_json(data["prompt"]), data["sampling_params"]) == request
    result = GenResult("", "tool_calls", 9, 4, tool_calls=(ToolCall("c1", "add", {"a": 2}),))
    assert result_from_json(through_json(result_to_json(result))) == result
    with pytest.raises(ValueError, match="`tool_choice` must be one of"):
        request_from_json(
            Prompt(()), {"tools": data["sampling_params"]["tools"], "tool_choice": "x"}
        )
    with pytest.raises(ValueError, match="cannot be combined with an output constraint"):
        request_from_json(Prompt(()), {**data["sampling_params"], "regex": "a"})


@pytest.mark.parametrize("reason", ["stop", "length", "eos"])
def test_results_round_trip(reason: str) -> None:
    result = GenResult("Paris.", reason, prompt_tokens=12, completion_tokens=3, cached_tokens=8)
    data = through_json(result_to_json(result))
    assert data["meta_info"]["finish_reason"]["type"] == ("stop" if reason == "eos" else reason)
    assert result_from_json(data) == result


def test_an_sglang_result_reads_and_a_malformed_one_is_a_value_error() -> None:
    sglang = {
        "text": "x",
        "meta_info": {
            "prompt_tokens": 2,
            "completion_tokens": 1,
            "finish_reason": {"type": "length"},
        },
    }
    assert result_from_json(sglang) == GenResult("x", "length", 2, 1, 0)
    with pytest.raises(ValueError, match="malformed `/generate` result"):
        result_from_json({"text": "x", "meta_info": {}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"segments": "a"}, "list of `segments`"),
        ({"segments": [{"type": "video"}]}, "prompt segment 0 is malformed"),
        ({"segments": [{"type": "message", "role": "narrator", "content": ""}]}, "segment 0"),
        ({"segments": [], "open_role": "narrator"}, "`open_role` must be one of"),
    ],
)
def test_malformed_prompts_are_value_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prompt_from_json(data)
