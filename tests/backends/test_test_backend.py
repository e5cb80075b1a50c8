"""The deterministic test backend: free text, stops, constraints, canned replies, caching, concurrency."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_lang.backends.samplers import sample_json, sample_regex
from sgl_lang.backends.test import TestBackend, create
from sgl_lang.protocol import (
    GEN_OPTIONS,
    TYPE_PATTERNS,
    BackendError,
    Choices,
    GenRequest,
    GenResult,
    Image,
    JsonSchema,
    Message,
    Prompt,
    Regex,
    Text,
    json_problem,
)


def prompt(text: str) -> Prompt:
    return Prompt((Text(text),))


def gen(
    backend: TestBackend,
    text: str = "Once upon a time",
    on_chunk: Callable[[str], None] | None = None,
    **options: Any,
) -> GenResult:
    return asyncio.run(backend.generate(GenRequest(prompt(text), **options), on_chunk))


def canned(tmp_path: Path, replies: Any) -> TestBackend:
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies), encoding="utf-8")
    return create(str(path))


# ---------------------------------------------------------------- prompts


def test_plain_text_renders_roles_open_messages_and_images() -> None:
    segments = (Text("Intro.\n"), Message("system", "Be brief."), Image(b"png"))
    closed = Prompt((*segments, Message("user", "Hi")))
    assert closed.plain_text() == "Intro.\nSystem: Be brief.\n<image>User: Hi\n"
    assert closed.is_chat and not prompt("x").is_chat
    assert Prompt((Message("assistant", "Hel"),), "assistant").plain_text() == "Assistant: Hel"
    assert Prompt((Message("user", "Q"),), "assistant").plain_text() == "User: Q\nAssistant: "
    assert Prompt((), "assistant").plain_text() == "Assistant: "


def test_capabilities_cover_everything() -> None:
    backend = create("")
    assert backend.name == "test"
    assert backend.capabilities.constraints == {"regex", "json", "choices", "grammar"}
    assert backend.capabilities.gen_options == GEN_OPTIONS
    assert backend.capabilities.select_methods == {"normalized", "greedy", "unconditional"}
    assert backend.capabilities.images


# ---------------------------------------------------------------- free text


def test_same_request_same_text_different_seed_different_text() -> None:
    first, again = gen(create(""), max_tokens=50), gen(create(""), max_tokens=50)
    assert first == again
    seeded = {gen(create(""), max_tokens=50, seed=seed).text for seed in range(5)}
    assert len(seeded) == 5
    assert gen(create(""), "Another prompt", max_tokens=50).text != first.text


def test_output_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "import asyncio; from sgl_lang.backends.test import create; "
        "from sgl_lang.protocol import GenRequest, Prompt, Text; "
        "r = GenRequest(Prompt((Text('hash me'),)), max_tokens=30, seed=7); "
        "print(asyncio.run(create('').generate(r)).text)"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(hash_seed)},
        ).stdout
        for hash_seed in (1, 2)
    }
    assert len(outputs) == 1
    assert outputs == {gen(create(""), "hash me", max_tokens=30, seed=7).text + "\n"}


def test_text_is_vocabulary_words_one_token_each() -> None:
    result = gen(create(""), max_tokens=40, ignore_eos=True)
    tokens = re.findall(r"\s*\S+|\s+", result.text)
    words = re.findall(r"\w+|\.|\n", result.text)
    assert result.completion_tokens == len(words) == 40
    assert len(tokens) <= 40  # a "." glues to the word before it when split by whitespace
    assert result.text.startswith(" ")  # continues a prompt that ends mid-line
    assert not gen(create(""), "Answer: ", max_tokens=3).text.startswith(" ")


def test_max_tokens_gives_length() -> None:
    result = gen(create(""), max_tokens=7, ignore_eos=True)
    assert (result.finish_reason, result.completion_tokens) == ("length", 7)
    empty = gen(create(""), max_tokens=0)
    assert (empty.text, empty.finish_reason, empty.completion_tokens) == ("", "length", 0)


def test_eos_ends_a_turn_unless_ignored() -> None:
    ended = gen(create(""), max_tokens=500)
    assert ended.finish_reason == "eos" and ended.completion_tokens < 500
    assert ended.text.endswith(".")
    ignored = gen(create(""), max_tokens=500, ignore_eos=True)
    assert ignored.finish_reason == "length" and ignored.completion_tokens == 500
    assert ignored.text.startswith(ended.text)


def test_stop_string_ends_generation_and_is_excluded() -> None:
    full = gen(create(""), max_tokens=80, ignore_eos=True).text
    words = full.split()
    stop = f"{words[3]} {words[4]}"  # spans two tokens
    result = gen(create(""), max_tokens=80, ignore_eos=True, stop=("zzz", stop))
    assert result.finish_reason == "stop"
    assert result.text == full[: full.index(stop)]
    assert stop not in result.text


def test_earliest_stop_wins_and_empty_stops_are_ignored() -> None:
    full = gen(create(""), max_tokens=80, ignore_eos=True).text
    result = gen(create(""), max_tokens=80, ignore_eos=True, stop=("", "\n", "."))
    cut = min(i for i in (full.find("\n"), full.find(".")) if i >= 0)
    assert (result.text, result.finish_reason) == (full[:cut], "stop")


@pytest.mark.parametrize("stop", [(), (".",), ("s t", "e."), ("\n",)])
def test_streamed_chunks_concatenate_to_the_text(stop: tuple[str, ...]) -> None:
    chunks: list[str] = []
    result = gen(create(""), on_chunk=chunks.append, max_tokens=60, stop=stop, ignore_eos=True)
    assert "".join(chunks) == result.text
    assert all(chunks)


def test_concurrent_requests_interleave_their_chunks() -> None:
    backend = create("")
    events: list[str] = []

    def recorder(name: str) -> Callable[[str], None]:
        return lambda _chunk: events.append(name)

    async def both() -> None:
        await asyncio.gather(
            *(
                backend.generate(GenRequest(prompt(name), max_tokens=10), recorder(name))
                for name in "ab"
            )
        )

    asyncio.run(both())
    assert events[:4] == ["a", "b", "a", "b"]
    assert backend.max_in_flight == 2


def test_records_requests_and_peak_concurrency() -> None:
    backend = create("")
    requests = [GenRequest(prompt(f"branch {i}"), max_tokens=5) for i in range(6)]

    async def fan_out() -> list[GenResult]:
        return await asyncio.gather(*(backend.generate(request) for request in requests))

    asyncio.run(fan_out())
    assert backend.requests == requests
    assert backend.max_in_flight == 6
    gen(backend, max_tokens=3)
    assert backend.max_in_flight == 6 and len(backend.requests) == 7


# ---------------------------------------------------------------- token counts and the prefix cache


def test_prompt_tokens_count_words() -> None:
    assert gen(create(""), "one two  three\nfour", max_tokens=1).prompt_tokens == 4
    assert gen(create(""), "", max_tokens=1).prompt_tokens == 1


def test_cached_tokens_follow_earlier_prompts_and_hints() -> None:
    backend = create("")
    shared = "Here are two tips for staying healthy: diet and exercise."
    assert gen(backend, shared + " Expand tip 1:", max_tokens=2).cached_tokens == 0
    assert gen(backend, shared + " Expand tip 2:", max_tokens=2).cached_tokens == 12
    assert gen(backend, shared + " Expand tip 2:", max_tokens=2).cached_tokens == 13

    hinted = create("")
    asyncio.run(hinted.cache_prefix(prompt("A long shared few-shot prefix.")))
    assert gen(hinted, "A long shared few-shot prefix. Question 1", max_tokens=2).cached_tokens == 5
    assert hinted.prefix_hints == [prompt("A long shared few-shot prefix.")]


def test_generated_text_is_cached_for_the_next_turn() -> None:
    backend = create("")
    first = gen(backend, "Story:", max_tokens=6, ignore_eos=True)
    follow_up = gen(backend, "Story:" + first.text + " Next:", max_tokens=2)
    assert follow_up.cached_tokens == 7


# ---------------------------------------------------------------- regex


REALISTIC_PATTERNS = [
    *TYPE_PATTERNS.values(),
    r"[A-Z][a-z]+, [A-Z]{2}",
    r"\d{4}-\d{2}-\d{2}",
    r"[\w.+-]+@[a-z]+\.(com|org)",
    r"\(\d{3}\) \d{3}-\d{4}",
    r"(yes|no|maybe)",
    r"[^\n]{1,20}\n",
    r"Answer: [A-D]",
    r"^\s*\w+\s*$",
    r"(?i)hello (world|there)",
    r"(?P<word>\w+)-\d",
    r"(?>ab|a)c",
    r"\bw\w*\b",
    r"\S+( \S+){2}",
    r"[^aeiou\d ]{3,}",
    r"x*?y+?z??",
    r"a{0}b{2,}c{,2}",
    r"[α-ω]{3}",
    r"(?:https?://)?[a-z]+(\.[a-z]+)+",
]


@pytest.mark.parametrize("pattern", REALISTIC_PATTERNS)
def test_regex_samples_match_in_full(pattern: str) -> None:
    for seed in range(20):
        assert re.fullmatch(pattern, sample_regex(pattern, random.Random(seed)))


def test_type_patterns_parse_as_python_values() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        int(sample_regex(TYPE_PATTERNS["int"], rng))
        float(sample_regex(TYPE_PATTERNS["float"], rng))
        assert sample_regex(TYPE_PATTERNS["bool"], rng) in ("true", "false")


_ATOMS = st.sampled_from(
    [
        *("a", "b", "z", "0", "7", r"\.", "-", " ", r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", "."),
        *(r"[a-f]", r"[^a-z]", r"[A-Z0-9_]", r"[^\d\s]", r"[\w.-]", r"[^abc]", r"[x-z\d]"),
    ]
)
_QUANTIFIERS = st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{2,}", "{,2}", "*?", "+?", "??"])


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(inner, min_size=2, max_size=4).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda parts: "(" + "|".join(parts) + ")"),
        st.tuples(inner, _QUANTIFIERS).map(lambda pair: f"(?:{pair[0]}){pair[1]}"),
        inner.map(lambda part: f"({part})"),
    )


@settings(max_examples=300, deadline=None)
@given(pattern=st.recursive(_ATOMS, _compound, max_leaves=12), seed=st.integers(0, 2**32))
def test_regex_samples_match_generated_patterns(pattern: str, seed: int) -> None:
    assert re.fullmatch(pattern, sample_regex(pattern, random.Random(seed)))


def test_regex_constraint_through_generate_ignores_max_tokens_and_stop() -> None:
    pattern = r"(\w+ ){5}done"
    chunks: list[str] = []
    backend = create("")
    result = gen(
        backend, on_chunk=chunks.append, max_tokens=1, stop=(" ",), constraint=Regex(pattern)
    )
    assert re.fullmatch(pattern, result.text)
    assert "".join(chunks) == result.text
    assert (result.finish_reason, result.completion_tokens) == ("eos", 6)
    assert result == gen(create(""), max_tokens=1, stop=(" ",), constraint=Regex(pattern))


def test_regex_errors() -> None:
    with pytest.raises(BackendError, match="backreferences"):
        sample_regex(r"(a)\1", random.Random(0))
    with pytest.raises(BackendError, match="invalid regex"):
        sample_regex(r"(a", random.Random(0))
    with pytest.raises(BackendError, match="could not sample"):
        sample_regex(r"a(?=b)", random.Random(0))


# ---------------------------------------------------------------- JSON Schema

PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": r"^[a-z]+@[a-z]+\.com$"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "size": {"type": "string", "enum": ["small", "medium", "large"]},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "home": {"$ref": "#/$defs/City"},
        "friends": {"type": "array", "items": {"$ref": "#/$defs/Friend"}},
        "nickname": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]},
    },
    "required": ["name", "age", "tags", "size", "home"],
    "additionalProperties": False,
    "$defs": {
        "City": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 12},
                "population": {"type": "integer", "exclusiveMinimum": 0},
                "area": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 1.0},
                "capital": {"type": "boolean"},
            },
            "required": ["name", "population", "area", "capital"],
            "additionalProperties": False,
        },
        "Friend": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "best": {"const": True}},
            "required": ["name"],
        },
    },
}


def test_json_samples_are_valid_and_vary() -> None:
    samples = [sample_json(PERSON, random.Random(seed)) for seed in range(40)]
    for sample in samples:
        assert json_problem(sample, PERSON) is None, sample
        assert json_problem(json.loads(json.dumps(sample)), PERSON) is None
    assert any("email" in sample for sample in samples)
    assert any("email" not in sample for sample in samples)
    assert {sample["size"] for sample in samples} == {"small", "medium", "large"}
    assert any(sample.get("friends") for sample in samples)


def test_json_constraint_through_generate() -> None:
    result = gen(create(""), constraint=JsonSchema(PERSON))
    assert json_problem(json.loads(result.text), PERSON) is None
    assert result.finish_reason == "eos"


def test_json_recursive_schema_terminates() -> None:
    tree = {
        "$ref": "#/definitions/Node",
        "definitions": {
            "Node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
                "required": ["children"],
            }
        },
    }
    for seed in range(10):
        assert json_problem(sample_json(tree, random.Random(seed)), tree) is None
    with pytest.raises(BackendError, match="refers to itself"):
        sample_json({"$ref": "#"}, random.Random(0))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"name": "x"}, "missing required property 'age'"),
        ({**{"name": "x", "age": 3, "tags": [], "size": "small"}}, "out of bounds"),
        ({"name": "x", "age": True, "tags": ["t"], "size": "small"}, "not of type integer"),
        ({"name": "x", "age": 121, "tags": ["t"], "size": "small"}, "breaks maximum"),
        ({"name": "x", "age": 3, "tags": ["t"], "size": "huge"}, "not one of"),
        ({"name": "x", "age": 3, "tags": [1], "size": "small"}, r"\$.tags\[0\]"),
        ({"name": "x", "age": 3, "tags": ["t"], "size": "small", "x": 1}, "unexpected"),
    ],
)
def test_json_validator_reports_problems(value: Any, problem: str) -> None:
    schema = {k: v for k, v in PERSON.items() if k != "required"}
    schema["required"] = ["name", "age", "tags", "size"]
    found = json_problem(value, schema)
    assert found is not None and re.search(problem, found), found


def test_json_validator_edge_cases() -> None:
    assert json_problem(1, {"type": "number"}) is None
    assert json_problem(1.5, {"type": "integer"}) is not None
    assert json_problem(None, {"type": ["string", "null"]}) is None
    assert json_problem("ab", {"anyOf": [{"const": "a"}, {"const": "b"}]}) is not None
    assert json_problem({"k": 1}, {"additionalProperties": {"type": "string"}}) is not None
    assert json_problem("x", {"allOf": [{"type": "string"}, {"minLength": 2}]}) is not None
    with pytest.raises(BackendError, match="does not resolve"):
        json_problem(1, {"$ref": "#/$defs/Missing"})


_SCALAR_SCHEMAS = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "integer", "minimum": -5, "maximum": 5},
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "boolean"},
        {"type": "null"},
        {"enum": ["red", "green", 3]},
        {"type": "string", "pattern": r"^[A-Z]{3}\d$"},
        {"type": "string", "minLength": 5, "maxLength": 8},
    ]
)


def _compound_schema(inner: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    properties = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), inner, max_size=4)
    objects = properties.flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props) or [""]), unique=True).map(
            lambda required: {
                "type": "object",
                "properties": props,
                "required": [name for name in required if name in props],
                "additionalProperties": False,
            }
        )
    )
    arrays = st.builds(lambda item: {"type": "array", "items": item}, inner)
    unions = st.lists(inner, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    maps = st.builds(lambda value: {"type": "object", "additionalProperties": value}, inner)
    return st.one_of(objects, arrays, unions, maps)


@settings(max_examples=200, deadline=None)
@given(schema=st.recursive(_SCALAR_SCHEMAS, _compound_schema, max_leaves=10), seed=st.integers())
def test_json_samples_are_valid_for_generated_schemas(schema: dict, seed: int) -> None:
    assert json_problem(sample_json(schema, random.Random(seed)), schema) is None


# ---------------------------------------------------------------- choices and scores


def test_choices_pick_an_option_deterministically() -> None:
    options = ("red", "green", "blue")
    picks = [gen(create(""), seed=seed, constraint=Choices(options)).text for seed in range(20)]
    assert set(picks) == set(options)
    assert picks == [gen(create(""), seed=s, constraint=Choices(options)).text for s in range(20)]
    with pytest.raises(BackendError, match="at least one option"):
        gen(create(""), constraint=Choices(()))


def test_scores_are_deterministic_per_prompt_choice_and_method() -> None:
    backend = create("")
    choices = ["yes", "no", "maybe"]

    def score(text: str, method: str) -> list[float]:
        return asyncio.run(backend.score(prompt(text), choices, method))

    normalized = score("Is it? ", "normalized")
    assert normalized == score("Is it? ", "normalized") and len(set(normalized)) == 3
    assert all(value < 0 for value in normalized)
    assert score("Is it? ", "greedy") != normalized
    assert score("Is it? ", "unconditional") != normalized
    assert score("Is it really? ", "normalized") != normalized
    with pytest.raises(BackendError, match="unknown select method"):
        score("x", "best")


# ---------------------------------------------------------------- canned replies


def test_list_replies_are_used_in_order_then_text_is_generated(tmp_path: Path) -> None:
    backend = canned(tmp_path, ["Paris", "It is sunny. Very sunny.\n"])
    assert backend.name == f"test:{tmp_path / 'replies.json'}"
    first = gen(backend, "Capital?")
    assert (first.text, first.finish_reason, first.completion_tokens) == ("Paris", "eos", 1)
    second = gen(backend, "Weather?", max_tokens=3)
    assert (second.text, second.finish_reason) == ("It is sunny.", "length")
    assert gen(backend, "More?").text == gen(create(""), "More?").text


def test_replies_go_through_stop_and_continue_past_eos_when_ignored(tmp_path: Path) -> None:
    assert gen(canned(tmp_path, ["a b. c d"]), stop=(".",)).text == "a b"
    continued = gen(canned(tmp_path, ["a b."]), max_tokens=5, ignore_eos=True)
    assert continued.text.startswith("a b. ") and continued.finish_reason == "length"


def test_match_replies_pick_the_first_match(tmp_path: Path) -> None:
    backend = canned(
        tmp_path,
        [{"match": r"capital of \w+", "reply": " Paris"}, {"match": "capital", "reply": " Rome"}],
    )
    assert gen(backend, "The capital of France is").text == " Paris"
    assert gen(backend, "The capital of France is").text == " Paris"
    assert gen(backend, "A capital idea").text == " Rome"
    assert gen(backend, "Unrelated").text == gen(create(""), "Unrelated").text


def test_replies_must_satisfy_constraints(tmp_path: Path) -> None:
    backend = canned(tmp_path, [{"match": "", "reply": "42"}])
    assert gen(backend, constraint=Regex(TYPE_PATTERNS["int"])).text == "42"
    assert gen(backend, constraint=JsonSchema({"type": "integer"})).text == "42"
    assert gen(backend, constraint=Choices(("41", "42"))).text == "42"
    with pytest.raises(BackendError, match=r"test reply '42' does not meet .*regex '\[a-z\]\+'"):
        gen(backend, constraint=Regex("[a-z]+"))
    with pytest.raises(BackendError, match="is not of type string"):
        gen(backend, constraint=JsonSchema({"type": "string"}))


def test_matching_reply_wins_a_select(tmp_path: Path) -> None:
    backend = canned(tmp_path, [{"match": "Answer:", "reply": "no"}])
    scores = asyncio.run(backend.score(prompt("Answer:"), ["yes", "no"], "normalized"))
    assert scores[1] == 0.0 > scores[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read test replies"),
        ("[1, 2", "not valid JSON"),
        ('{"reply": "x"}', "must be a JSON list"),
        ('["a", {"match": "x", "reply": "y"}]', "item 0 is not"),
        ('[{"match": "x"}]', "item 0 is not"),
        ('[{"match": "(", "reply": "y"}]', "item 0: bad regex"),
    ],
)
def test_invalid_reply_files_name_the_path(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "replies.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(BackendError, match=message) as info:
        create(str(path))
    assert str(path) in info.value.message
