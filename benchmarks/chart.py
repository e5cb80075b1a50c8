"""The bar chart of a results JSON: throughput over the no-cache baseline, per workload and
system (log scale). Needs matplotlib, which is not a dependency of sgl-lang: install the
`bench` extra, or this runs it with the vLLM peer's Python when that has it.

    python benchmarks/chart.py benchmarks/results/<date>.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PEER_PYTHON = Path.home() / ".cache" / "sgl-lang" / "peers" / "vllm" / "bin" / "python"


def write_chart(results_path: Path) -> str:
    """Write `<results>.png` next to the JSON; returns what happened, for the console."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if PEER_PYTHON.exists():
            done = subprocess.run([str(PEER_PYTHON), __file__, str(results_path)], check=False)
            if done.returncode == 0:
                return f"chart: {results_path.with_suffix('.png')} (drawn with {PEER_PYTHON})"
        return "chart: skipped (matplotlib is not installed; `pip install -e .[bench]`)"
    return f"chart: {draw(results_path)}"


def draw(results_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    document = json.loads(results_path.read_text(encoding="utf-8"))
    rows = [r for r in document["results"] if r["ratio_vs_baseline"] is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    ratio = {(r["system"], r["workload"]): r["ratio_vs_baseline"] for r in rows}
    width = 0.8 / max(len(systems), 1)
    figure, axes = plt.subplots(figsize=(max(8, 1.4 * len(workloads)), 4.5))
    for i, system in enumerate(systems):
        xs = [w + (i - (len(systems) - 1) / 2) * width for w in range(len(workloads))]
        ys = [ratio.get((system, w), 0) for w in workloads]
        axes.bar(xs, ys, width, label=system)
    axes.set_yscale("log")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(workloads)), workloads, rotation=20)
    axes.set_ylabel(f"programs/s ÷ {document['baseline']} (log)")
    axes.set_title(
        f"sgl-lang benchmarks {document['date']}" + (" (quick)" if document["quick"] else "")
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = results_path.with_suffix(".png")
    figure.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1])))
