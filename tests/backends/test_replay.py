"""The replay wrapper (`sgl run --replay FILE`): repeated requests are answered from the file,
in this run and in later ones (other processes too), without calling the backend."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sgl_lang.backends.replay import ReplayBackend, Replayed, ReplayedScores, request_key
from sgl_lang.backends.test import Reply, TestBackend
from sgl_lang.protocol import (
    CONSTRAINT_KINDS,
    SELECT_METHODS,
    Backend,
    Capabilities,
    Choices,
    GenRequest,
    GenResult,
    Image,
    Message,
    Prompt,
    Text,
    TokenLogprob,
    ToolCall,
    ToolSpec,
)

PROMPT = Prompt((Message("user", "Name a colour."),), "assistant")
ROOT = Path(__file__).resolve().parents[2]


class Counting(Backend):
    """Answers "reply N" to the N-th call (so repeated requests get different answers) and
    counts every call."""

    def __init__(self, name: str = "counting") -> None:
        self.name = name
        self.capabilities = Capabilities(CONSTRAINT_KINDS, SELECT_METHODS)
        self.num_calls = 0
        self.prefix_hints: list[Prompt] = []

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        self.num_calls += 1
        text = f"reply {self.num_calls}"
        for word in text.split(" "):
            if on_chunk is not None:
                on_chunk(word)
        return GenResult(text, "eos", 5, 2, 1)

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        self.num_calls += 1
        return [-float(i + self.num_calls) for i in range(len(choices))]

    async def cache_prefix(self, prompt: Prompt) -> None:
        self.prefix_hints.append(prompt)


def replaying(path: Path, name: str = "counting") -> tuple[ReplayBackend, Counting]:
    inner = Counting(name)
    return ReplayBackend(inner, path), inner


def test_a_second_run_makes_no_backend_call(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"

    async def session(backend: Backend) -> list[Any]:
        await backend.cache_prefix(PROMPT)
        answer = await backend.generate(GenRequest(PROMPT, max_tokens=8))
        scores = await backend.score(PROMPT, ["red", "blue"], "normalized")
        await backend.close()
        return [answer, scores]

    first, first_inner = replaying(path)
    recorded = asyncio.run(session(first))
    assert first_inner.num_calls == 2 and first_inner.prefix_hints == [PROMPT]
    second, second_inner = replaying(path)
    replayed = asyncio.run(session(second))
    assert second_inner.num_calls == 0 and second_inner.prefix_hints == []
    assert asdict(replayed[0]) == asdict(recorded[0]) and replayed[1] == recorded[1]
    assert isinstance(replayed[0], Replayed) and isinstance(replayed[1], ReplayedScores)
    assert not isinstance(recorded[0], Replayed)


def test_any_difference_in_the_request_misses(tmp_path: Path) -> None:
    base = GenRequest(PROMPT, max_tokens=8)
    variants = [
        base,
        GenRequest(PROMPT, max_tokens=9),
        GenRequest(PROMPT, max_tokens=8, stop=("\n",)),
        GenRequest(PROMPT, max_tokens=8, top_k=5),
        GenRequest(PROMPT, max_tokens=8, seed=1),
        GenRequest(PROMPT, max_tokens=8, heal=False),
        GenRequest(PROMPT, max_tokens=8, constraint=Choices(("red", "blue"))),
        GenRequest(Prompt((Text("Name a colour."),)), max_tokens=8),
        GenRequest(Prompt((Message("user", "Name a colour."),)), max_tokens=8),  # not open
    ]
    backend, inner = replaying(tmp_path / "replay.jsonl")

    async def ask_all() -> None:
        for request in [*variants, *variants]:
            await backend.generate(request)
        for method in ("normalized", "greedy"):
            await backend.score(PROMPT, ["red", "blue"], method)
        await backend.score(PROMPT, ["blue", "red"], "normalized")

    asyncio.run(ask_all())
    assert inner.num_calls == len(variants) + 3
    other_backend = request_key("other", "gen", request=base)
    assert other_backend != request_key("counting", "gen", request=base)


def test_images_are_keyed_by_their_content(tmp_path: Path) -> None:
    picture = tmp_path / "a.png"
    picture.write_bytes(b"one")
    request = GenRequest(Prompt((Image(str(picture)), Text("What is it?"))))
    before = request_key("b", "gen", request=request)
    picture.write_bytes(b"two")
    assert request_key("b", "gen", request=request) != before
    as_bytes = GenRequest(Prompt((Image(b"two"), Text("What is it?"))))
    assert request_key("b", "gen", request=as_bytes) == request_key("b", "gen", request=request)


def test_sampled_requests_replay_in_order_of_occurrence(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    sampled = GenRequest(PROMPT, temperature=0.8)
    greedy = GenRequest(PROMPT)

    async def session(backend: Backend, num_sampled: int) -> list[str]:
        sampled_texts = await asyncio.gather(
            *(backend.generate(sampled) for _ in range(num_sampled))
        )
        greedy_texts = [(await backend.generate(greedy)).text for _ in range(2)]
        await backend.close()
        return [r.text for r in sampled_texts] + greedy_texts

    first, first_inner = replaying(path)
    assert asyncio.run(session(first, 3)) == [f"reply {n}" for n in (1, 2, 3, 4, 4)]
    assert first_inner.num_calls == 4  # the second greedy request is replayed
    second, second_inner = replaying(path)
    assert asyncio.run(session(second, 4)) == [f"reply {n}" for n in (1, 2, 3, 1, 4, 4)]
    assert second_inner.num_calls == 1  # one occurrence more than recorded


def test_a_replayed_answer_streams_as_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    first, _ = replaying(path)
    live: list[str] = []
    asyncio.run(first.generate(GenRequest(PROMPT), live.append))
    second, _ = replaying(path)
    replayed: list[str] = []
    asyncio.run(second.generate(GenRequest(PROMPT), replayed.append))
    assert live == ["reply", "1"] and replayed == ["reply 1"]


def test_unreadable_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    first, _ = replaying(path)
    asyncio.run(first.generate(GenRequest(PROMPT, max_tokens=1)))
    asyncio.run(first.generate(GenRequest(PROMPT, max_tokens=2)))
    asyncio.run(first.close())
    good, second_good = path.read_text().splitlines()
    entry = json.loads(second_good)
    entry["answer"] = {"text": 3}
    half = good[: len(good) // 2]  # a crash in the middle of a write
    path.write_text(f"not json\n{json.dumps(entry)}\n{good}\n{half}")
    warnings: list[str] = []
    inner = Counting()
    second = ReplayBackend(inner, path, warnings.append)
    assert warnings == [f"{path}: skipped 3 unreadable line(s) (first: line 1)"]

    async def ask() -> list[str]:
        answers = [await second.generate(GenRequest(PROMPT, max_tokens=n)) for n in (1, 2)]
        await second.close()
        return [a.text for a in answers]

    assert asyncio.run(ask()) == ["reply 1", "reply 1"] and inner.num_calls == 1
    lines = path.read_text().splitlines()
    assert lines[-2] == half and json.loads(lines[-1])["answer"]["text"] == "reply 1"
    third, third_inner = replaying(path)
    asyncio.run(third.generate(GenRequest(PROMPT, max_tokens=2)))
    assert third_inner.num_calls == 0


def test_the_file_is_reused_across_processes(tmp_path: Path) -> None:
    program = tmp_path / "colours.sgl"
    program.write_text(
        'user "Name a colour."\n'
        "assistant gen colour(max_tokens=6)\n"
        "fork 2:\n"
        "    gen idea(max_tokens=4, temperature=0.9)\n"
        'select pick from ["red", "blue"]\n'
        "print(colour, pick)\n"
    )
    replay = tmp_path / "replay.jsonl"

    def run(trace: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sgl_lang.cli", "run", str(program), "--backend",
                   "test", "--replay", str(replay), "--trace-json", str(trace)]  # fmt: skip
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    first, second = run(tmp_path / "1.json"), run(tmp_path / "2.json")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert second.stdout == first.stdout
    reports = [json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2)]
    calls = [report["calls"] for report in reports]
    assert [c["kind"] for c in calls[0]] == ["gen", "prefix", "gen", "gen", "select"]
    assert not any(c["replayed"] for c in calls[0])
    assert [c["replayed"] for c in calls[1]] == [True, False, True, True, True]  # not the hint
    assert [c["output"] for c in calls[1]] == [c["output"] for c in calls[0]]
    assert reports[1]["totals"]["num_replayed"] == 4
    assert reports[1]["totals"]["completion_tokens"] == 0  # nothing computed in this run
    assert len(replay.read_text().splitlines()) == 4


def test_log_probs_and_reasoning_replay_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    request = GenRequest(PROMPT, max_tokens=8, logprobs=2, reasoning=True)

    async def session() -> GenResult:
        backend = ReplayBackend(TestBackend([Reply("<think>Hmm.</think> Red.")]), path)
        try:
            return await backend.generate(request)
        finally:
            await backend.close()

    recorded, replayed = asyncio.run(session()), asyncio.run(session())
    assert isinstance(replayed, Replayed) and replayed.reasoning == "Hmm."
    assert recorded.logprobs and replayed.logprobs == recorded.logprobs
    assert isinstance(replayed.logprobs[0], TokenLogprob)


def test_tool_calls_replay_as_tool_calls(tmp_path: Path) -> None:
    calls = (ToolCall("call_1", "add", {"a": 2, "b": 3}),)
    spec = ToolSpec("add", "Add two numbers.", {"type": "object"})
    request = GenRequest(PROMPT, tools=(spec,))
    test = TestBackend([Reply(json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}}))])
    first = asyncio.run(ReplayBackend(test, tmp_path / "r.jsonl").generate(request))
    again = asyncio.run(ReplayBackend(TestBackend(), tmp_path / "r.jsonl").generate(request))
    assert isinstance(again, Replayed) and again.tool_calls == first.tool_calls
    assert [(c.name, c.arguments) for c in again.tool_calls] == [
        (calls[0].name, calls[0].arguments)
    ]
    assert again.finish_reason == "tool_calls"
