"""The benchmark harness runs every workload end to end (`--quick` on the test backend), so
the programs, the data loaders and the report cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA}")
def test_quick_run_on_the_test_backend(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--systems",
            "test",
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
    results = {r["workload"]: r for r in document["results"]}
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
