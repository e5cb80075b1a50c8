"""`--trace` through the `Backend` hooks: a backend that can split a prompt at its cached part
and report engine totals gets both in the trace; one without the hooks is traced all the same."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sgl_lang import runner
from sgl_lang.backends.test import Reply, TestBackend
from sgl_lang.config import RunOptions
from sgl_lang.protocol import CachedSplit, GenRequest, GenResult, Prompt
from sgl_lang.trace import CACHED_MARK

PROGRAM = '"The sky is "\ngen colour(max_tokens=2)\nprint(colour)\n'
NUM_CACHED_TOKENS = 4  # the fake's tokens are characters: "The " came from its cache


@dataclasses.dataclass(frozen=True)
class FakeTotals:
    num_prompt_tokens: int = 11
    num_cached_tokens: int = NUM_CACHED_TOKENS
    num_decode_tokens: int = 2
    num_finished: int = 1
    cache_hit_rate: float = NUM_CACHED_TOKENS / 11
    prefill_tokens_per_s: float = 100.0
    decode_tokens_per_s: float = 10.0
    mean_decode_batch_size: float = 1.0
    kernels: str = "vllm"


class EngineLikeBackend(TestBackend):
    """The test backend with the trace hooks of a backend that runs an engine here."""

    def __init__(self) -> None:
        super().__init__([Reply("blue")])
        self.num_warm_ups = 0
        self.splits: list[int] = []

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        result = await super().generate(request, on_chunk)
        return dataclasses.replace(result, cached_tokens=NUM_CACHED_TOKENS)

    async def warm_up(self) -> None:
        self.num_warm_ups += 1

    def stats(self) -> FakeTotals:
        return FakeTotals()

    def split_cached(self, prompt: Prompt, num_cached_tokens: int) -> CachedSplit:
        self.splits.append(num_cached_tokens)
        text = prompt.plain_text()
        return CachedSplit(text[:num_cached_tokens], text[num_cached_tokens:])


def traced_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: TestBackend, **options: Any
) -> dict[str, Any]:
    """Run PROGRAM on `backend` with --trace and --trace-json; the JSON report."""
    monkeypatch.setattr(runner, "get_backend", lambda uri, **engine: backend)
    program = tmp_path / "p.sgl"
    program.write_text(PROGRAM, encoding="utf-8")
    trace = tmp_path / "trace.json"
    run_options = RunOptions(trace=True, trace_json=trace, **options)
    assert asyncio.run(runner.run_file(program, {}, run_options)) == 0
    return json.loads(trace.read_text(encoding="utf-8"))


def test_a_backend_with_the_hooks_gets_its_cached_part_marked_and_its_engine_totals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = EngineLikeBackend()
    report = traced_run(tmp_path, monkeypatch, backend)
    (call,) = report["calls"]
    assert call["prompt"] == {"cached": "The ", "computed": "sky is "}
    assert backend.splits == [NUM_CACHED_TOKENS]
    assert backend.num_warm_ups == 1  # loaded before the calls, so their times are their own
    assert report["totals"]["engine"]["num_cached_tokens"] == NUM_CACHED_TOKENS
    assert report["totals"]["engine"]["cache_hit_rate"] == round(NUM_CACHED_TOKENS / 11, 4)
    assert report["totals"]["engine"]["kernels"] == "vllm"
    err = capsys.readouterr().err
    assert f"The {CACHED_MARK}sky is blue" in err and "vllm kernels" in err


def test_the_replay_wrapper_forwards_the_trace_hooks_but_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = EngineLikeBackend()
    report = traced_run(tmp_path, monkeypatch, backend, replay=tmp_path / "replay.jsonl")
    assert report["calls"][0]["prompt"] == {"cached": "The ", "computed": "sky is "}
    assert report["totals"]["engine"] is not None
    assert backend.num_warm_ups == 0  # a run replayed in full needs no model


def test_a_backend_without_the_hooks_is_traced_with_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = traced_run(tmp_path, monkeypatch, TestBackend([Reply("blue")]))
    (call,) = report["calls"]
    assert call["prompt"] == {"cached": "", "computed": "The sky is "}
    assert call["output"] == "blue" and report["totals"]["engine"] is None
    printed = capsys.readouterr().err
    assert "The sky is blue" in printed
    assert printed.count(CACHED_MARK) == 1  # only in the line that explains the mark
