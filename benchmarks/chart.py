"""The bar charts of a results JSON, one per metric (`METRICS`: throughput over the no-cache
baseline on a log scale, p50 latency, cache hit rate, accuracy), per workload and system.
Needs matplotlib, which is not a dependency of sgl-lang: install the `bench` extra, or this
runs it with the vLLM peer's Python when that has it.

    python benchmarks/chart.py benchmarks/results/<date>.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PEER_PYTHON = Path.home() / ".cache" / "sgl-lang" / "peers" / "vllm" / "bin" / "python"
METRICS = {  # result field: (axis label, log scale)
    "ratio_vs_baseline": ("programs/s ÷ {baseline} (log)", True),
    "latency_p50_s": ("p50 latency of a program (s)", False),
    "cache_hit_rate": ("prompt tokens served from the cache", False),
    "accuracy": ("share of graded answers correct", False),
}


def write_chart(results_path: Path) -> str:
    """Write `<results>-<metric>.png` next to the JSON; returns what happened, for the console."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if PEER_PYTHON.exists():
            done = subprocess.run([str(PEER_PYTHON), __file__, str(results_path)], check=False)
            if done.returncode == 0:
                return f"charts: {results_path.stem}-*.png (drawn with {PEER_PYTHON})"
        return "chart: skipped (matplotlib is not installed; `pip install -e .[bench]`)"
    return "charts: " + ", ".join(str(path) for path in draw_all(results_path))


def draw_all(results_path: Path) -> list[Path]:
    """One chart per metric that some result has."""
    document = json.loads(results_path.read_text(encoding="utf-8"))
    return [
        draw(document, results_path, metric)
        for metric in METRICS
        if any(r.get(metric) is not None for r in document["results"])
    ]


def draw(document: dict[str, Any], results_path: Path, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, log = METRICS[metric]
    rows = [r for r in document["results"] if r.get(metric) is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    value = {(r["system"], r["workload"]): r[metric] for r in rows}
    width = 0.8 / max(len(systems), 1)
    figure, axes = plt.subplots(figsize=(max(8, 1.4 * len(workloads)), 4.5))
    for i, system in enumerate(systems):
        xs = [w + (i - (len(systems) - 1) / 2) * width for w in range(len(workloads))]
        ys = [value.get((system, w), 0) for w in workloads]
        axes.bar(xs, ys, width, label=system)
    if log:
        axes.set_yscale("log")
        axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(workloads)), workloads, rotation=20)
    axes.set_ylabel(label.format(baseline=document["baseline"]))
    size = document.get("sizes", "quick" if document["quick"] else "default")
    axes.set_title(f"sgl-lang benchmarks {document['date']} ({size} sizes)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = results_path.with_name(f"{results_path.stem}-{metric}.png")
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


if __name__ == "__main__":
    for path in draw_all(Path(sys.argv[1])):
        print(path)
