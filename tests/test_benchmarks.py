"""The benchmark harness runs every workload end to end (`--quick` on the test backend), so
the programs, the data loaders and the report cannot rot; and no workload heals tokens, which
only our runtime can do."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgl_lang import nodes
from sgl_lang.loader import Loader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from suite import WORKLOADS, mmlu_subjects  # noqa: E402  (benchmarks/ is not a package)

DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")
def test_quick_run_on_the_test_backend(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--systems",
            "test,test",
            "--out",
            str(tmp_path),
            "--no-chart",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "programs per second" in done.stdout
    (path,) = tmp_path.glob("*-quick.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    first, second = document["results"][: len(WORKLOADS)], document["results"][len(WORKLOADS) :]
    assert all(r["agreement"] is None for r in first)
    assert [r["agreement"] for r in second] == [1.0] * len(WORKLOADS)  # the test backend is
    results = {r["workload"]: r for r in first}  # deterministic: the same answers twice
    assert set(results) == {
        "mmlu",
        "hellaswag",
        "react",
        "tree_of_thought",
        "json_decode",
        "chat_short",
        "chat_long",
        "rag",
        "tips",
    }
    for name, result in results.items():
        assert result["num_programs"] > 0, name
        assert result["num_failed"] == 0, (name, result["first_error"])
        assert result["programs_per_s"] > 0, name
    assert results["chat_long"]["cache_hit_rate"] > 0.5  # turn k + 1 extends turns 1..k


def test_agreement_flags_a_system_whose_answers_differ() -> None:
    from run import Result, _agree, agreement

    results = [
        Result("a", "mmlu", output_digests=["x", "y", "z", "w"]),
        Result("b", "mmlu", output_digests=["x", "y", "q", None]),
        Result("c", "mmlu", skipped="unavailable"),
    ]
    agreement(results)
    assert [r.agreement for r in results] == [None, 0.5, None]
    assert _agree(results[1].agreement) == "50% ⚠ differs" and _agree(1.0) == "100%"


def test_median_run_keeps_the_middle_run_and_every_run_s_rate() -> None:
    from run import Result, median_run

    runs = [Result("sgl", "react", programs_per_s=rate) for rate in (0.30, 0.20, 0.25)]
    assert median_run(runs) is runs[2] and runs[2].repeats_programs_per_s == [0.30, 0.20, 0.25]
    assert median_run(runs[:2]).programs_per_s == 0.20  # the lower middle of an even count


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")
def test_repeat_runs_each_workload_that_many_times(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--systems", "test"]
    options = ["--workloads", "tips", "--repeat", "3", "--out", str(tmp_path), "--no-chart"]
    done = subprocess.run(
        command + options, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(next(tmp_path.glob("*.json")).read_text(encoding="utf-8"))["results"]
    rates = result["repeats_programs_per_s"]
    assert len(rates) == 3 and result["programs_per_s"] == sorted(rates)[1]


@pytest.mark.parametrize("with_nocache", [True, False])
def test_ratios_name_the_system_they_divide_by(tmp_path: Path, with_nocache: bool) -> None:
    """Throughput ratios are over sgl-nocache when it ran, else over the first system, and the
    JSON, the Markdown report and the charts' label say which."""
    from run import Result, markdown_table, ratios, write_results

    results = [
        Result("vllm", "mmlu", programs_per_s=2.0),
        Result("sgl", "mmlu", programs_per_s=4.0),
    ]
    if with_nocache:
        results.append(Result("sgl-nocache", "mmlu", programs_per_s=1.0))
    base = "sgl-nocache" if with_nocache else "vllm"
    assert ratios(results)[("sgl", "mmlu")] == (4.0 if with_nocache else 2.0)
    write_results(results, tmp_path / "r.json", "default")
    document = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert document["baseline"] == base
    assert f"× {base} |" in markdown_table(document).splitlines()[0]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")
def test_the_default_sizes_are_the_issue_s_and_paper_sizes_fit_the_data() -> None:
    assert (
        WORKLOADS["mmlu"].sizes["default"] >= 40 and WORKLOADS["hellaswag"].sizes["default"] >= 20
    )
    assert len(mmlu_subjects(40)) == 4 and len(mmlu_subjects(300)) == 10
    counts = {name: len(w.items("paper", len)) for name, w in WORKLOADS.items()}
    assert counts["mmlu"] == 300 and counts["hellaswag"] == 200
    assert len({item.params["subject"] for item in WORKLOADS["mmlu"].items("default", len)}) == 4


def _healable_gens(body: tuple[object, ...], in_message: bool = False) -> Iterator[nodes.Gen]:
    """The `gen`s under `body` that can follow the program's own text: all but a message's first
    statement (`assistant gen x`: an empty message, so token healing has nothing to back up)."""
    for index, node in enumerate(body):
        if isinstance(node, nodes.Gen):
            if not (in_message and index == 0):
                yield node
        elif isinstance(node, nodes.Node):
            for field in dataclasses.fields(node):
                value = getattr(node, field.name)
                children = value if isinstance(value, tuple) else (value,)
                yield from _healable_gens(children, isinstance(node, nodes.Role))


@pytest.mark.parametrize(
    "path", sorted((ROOT / "benchmarks" / "workloads").glob("*.sgl")), ids=lambda p: p.stem
)
def test_workload_gens_do_not_heal(path: Path) -> None:
    """The peers cannot heal tokens, so a healed `gen` would give our runtime a different
    prompt (json_decode once did: `"name": ` without its trailing space token)."""
    program = Loader().load(path)
    for gen in _healable_gens(program.body):
        heal = {k.name: k.value for k in gen.args}.get("heal")
        assert isinstance(heal, nodes.Const) and heal.value is False, (
            f"{path.name}:{gen.span.line}: gen {gen.name} needs heal=false"
        )
