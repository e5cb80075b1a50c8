"""Every example program on the real embedded SmolLM2 (greedy, short outputs), with checks that
do not depend on the exact text: variables bound, fork order, select picks a choice, shared
prefixes come from the cache, the same outputs with the cache off and on either kernel set, and
requests that batch."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import lark
import pytest

from sgl_lang.backends.local import LocalBackend
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.config import RunConfig
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader
from sgl_lang.runner import run_rows
from sgl_lang.runtime.stats import EngineStats
from sgl_lang.state import State
from sgl_lang.stdlib import builtins

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.sgl"))
MAX_TOKENS = 12  # the default `max_tokens` of these runs (examples mostly set their own)
KERNEL_SETS = ("torch", "vllm")


@pytest.fixture(scope="module")
def backend(local_backend: LocalBackend) -> LocalBackend:
    return local_backend


class Run(NamedTuple):
    state: State
    interpreter: Interpreter
    printed: str


def run(backend: LocalBackend, path: Path) -> Run:
    loader = Loader()
    program = loader.load(path)
    printed = io.StringIO()
    interpreter = Interpreter(
        backend, default_max_tokens=MAX_TOKENS, load_program=loader.load_import
    )

    async def go() -> State:
        token = builtins.output.set(printed)
        try:
            return await interpreter.run_program(program)
        finally:
            builtins.output.reset(token)

    return Run(asyncio.run(go()), interpreter, printed.getvalue())


def stats(backend: LocalBackend) -> EngineStats:
    asyncio.run(backend.warm_up())
    result = backend.stats()
    assert result is not None
    return result


def mean_decode_batch(before: EngineStats, after: EngineStats) -> float:
    num_steps = after.num_decode_steps - before.num_decode_steps
    return (after.num_decode_tokens - before.num_decode_tokens) / max(1, num_steps)


def check_example(name: str, result: Run) -> None:
    """What each example must do on a real model, whatever it writes."""
    values = {**result.interpreter.scope.vars, **result.state.variables}
    calls, printed = result.interpreter.calls, result.printed
    if name == "hello":
        assert values["answer"].strip() and printed.startswith("model said: ")
    elif name == "chat":
        assert printed.count("turn ") == 3
        assert result.state.meta["reply"]["cached_tokens"] > 0  # turn 3 extends turns 1-2
    elif name == "classify":
        assert values["label"] in [" positive", " negative", " neutral"]
        assert "scored 3 choices" in printed
    elif name == "few_shot_qa":
        assert printed.startswith("France -> ") and "\nSpain -> " in printed
        assert calls[1].cached_tokens > 30  # the second run reuses the few-shot examples
    elif name == "json_extract":
        city = values["city"]
        assert isinstance(city["name"], str) and isinstance(city["population"], int)
        assert city["size"] in ("small", "medium", "large")
    elif name == "rag":
        assert "top document: Mars" in printed and values["answer"].strip()
    elif name == "tips":
        tips = values["tips"]
        assert [tip.attributes["i"] for tip in tips] == [1, 2]
        assert all(tip.attributes["detail"] for tip in tips)
        assert all(call.cached_tokens > 0 for call in calls[:2])  # the fork's shared prefix
    elif name == "tree_of_thought":
        plans = [plan.attributes for plan in values["plans"]]
        answers = [[s.attributes["answer"] for s in plan["solutions"]] for plan in plans]
        assert [plan["p"] for plan in plans] == [1, 2]
        assert all(isinstance(a, int) for pair in answers for a in pair)
        assert "majority answer:" in printed
    elif name == "arithmetic":
        lark.Lark(values["ARITH"], parser="earley").parse(values["expr"])  # raises if not
        assert "".join(token["token"] for token in values["tokens"]) == values["expr"]
        assert all(len(token["top"]) <= 2 for token in values["tokens"])
    elif name == "agent_tools":
        for made in result.state.meta["answer"]["tool_calls"]:  # constrained: always valid
            assert made["name"] in ("calculate", "conversion_factor")
            if made["name"] == "conversion_factor":
                assert made["arguments"]["unit"] in ("km", "mile", "kg", "pound")
        assert "answer:" in printed
    elif name == "agent_calc":
        assert values["action"] in ("calculate", "finish") and "final:" in printed
    else:
        raise AssertionError(f"no checks for examples/{name}.sgl: add them here")


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if p.stem != "batch_qa"], ids=lambda p: p.stem
)
def test_every_example_runs_on_the_local_model(backend: LocalBackend, path: Path) -> None:
    check_example(path.stem, run(backend, path))


def test_the_batch_example_shares_its_constant_prefix(backend: LocalBackend) -> None:
    program = Loader().load(ROOT / "examples" / "batch_qa.sgl")
    lines = (ROOT / "examples/data/questions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    asyncio.run(backend.bridged()).engine.flush_cache()
    before = stats(backend)
    results = asyncio.run(run_rows(program, Loader(), backend, rows, RunConfig()))
    after = stats(backend)
    assert [r["error"] for r in results] == [None] * len(rows)
    assert all(r["output"]["answer"].strip() for r in results)
    # every row's system message and user header came from the hint's cached prefix
    num_prompt = after.num_prompt_tokens - before.num_prompt_tokens
    num_cached = after.num_cached_tokens - before.num_cached_tokens
    assert num_cached >= len(rows) * 20 and num_cached / num_prompt > 0.5


def test_outputs_are_the_same_with_the_cache_off(backend: LocalBackend) -> None:
    uncached = LocalBackend(options=EngineOptions(enable_cache=False))
    for name in ("tips", "few_shot_qa"):
        on, off = (
            run(backend, ROOT / f"examples/{name}.sgl"),
            run(uncached, ROOT / f"examples/{name}.sgl"),
        )
        assert off.printed == on.printed
        assert all(call.cached_tokens == 0 for call in off.interpreter.calls)
        assert sum(call.cached_tokens for call in on.interpreter.calls) > 0


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if p.stem != "batch_qa"], ids=lambda p: p.stem
)
def test_every_example_answers_the_same_on_both_kernel_sets(
    kernel_backends: dict[str, LocalBackend], path: Path
) -> None:
    """`--kernels torch` and `--kernels vllm`: the same greedy variables and printed text."""
    runs = {name: run(backend, path) for name, backend in kernel_backends.items()}
    torch_run, vllm_run = runs["torch"], runs["vllm"]
    assert vllm_run.state.variables == torch_run.state.variables
    assert vllm_run.printed == torch_run.printed


@pytest.fixture(scope="module")
def kernel_backends() -> dict[str, LocalBackend]:
    """A backend per kernel set; the vllm one fails here, not later, where vLLM's ops are
    missing."""
    backends = {name: LocalBackend(options=EngineOptions(kernels=name)) for name in KERNEL_SETS}
    for name, backend in backends.items():
        assert asyncio.run(backend.bridged()).engine.stats().kernels == name
    return backends


FORK_8 = """
"A list of short facts about the ocean, one per line.\\n"
facts = fork i in range(8):
    "Fact {i + 1}:"
    gen fact(max_tokens=8, stop="\\n")
"""

BATCH_8 = """
param topic
"Write one short sentence about {topic}:"
gen line(max_tokens=8, stop="\\n")
"""


def test_fork_branches_and_batch_rows_decode_together(backend: LocalBackend) -> None:
    before = stats(backend)
    interpreter = Interpreter(backend)
    asyncio.run(interpreter.run_program(parse_text(FORK_8, "fork8.sgl")))
    after_fork = stats(backend)
    assert [branch.attributes["i"] for branch in interpreter.scope.vars["facts"]] == list(range(8))
    assert mean_decode_batch(before, after_fork) > 2

    program = parse_text(BATCH_8, "batch8.sgl")
    topics = ["cats", "rain", "music", "bread", "trees", "trains", "salt", "stars"]
    rows: list[dict[str, Any]] = [{"topic": topic} for topic in topics]
    results = asyncio.run(run_rows(program, Loader(), backend, rows, RunConfig()))
    assert all(r["error"] is None for r in results)
    assert mean_decode_batch(after_fork, stats(backend)) > 2


def test_the_trace_marks_cached_prompt_parts_and_reports_engine_totals(
    backend: LocalBackend, tmp_path: Path
) -> None:
    from sgl_lang.config import RunOptions
    from sgl_lang.runner import run_file

    trace = tmp_path / "trace.json"
    code = asyncio.run(run_file(ROOT / "examples/tips.sgl", {}, RunOptions(trace_json=trace)))
    assert code == 0
    report = json.loads(trace.read_text())
    branch = report["calls"][1]
    assert branch["kind"] == "gen" and branch["cached_tokens"] > 0
    assert branch["prompt"]["cached"].startswith("Here are two tips")
    assert "Now expand tip" in branch["prompt"]["cached"] + branch["prompt"]["computed"]
    engine = report["totals"]["engine"]
    assert engine["cache_hit_rate"] > 0 and engine["decode_tokens_per_s"] > 0
