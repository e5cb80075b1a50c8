"""Run the SGLang-paper workloads (`benchmarks/workloads/*.sgl`) on sgl-lang and its peers,
side by side in one run, and report throughput, latency, cache hit rate and accuracy.

    python benchmarks/run.py                                  # everything, default sizes
    python benchmarks/run.py --quick                          # a slice of every workload
    python benchmarks/run.py --sizes paper --systems sgl,vllm # the SGLang paper's sizes
    python benchmarks/run.py --workloads mmlu,hellaswag --systems sgl,sgl-nocache
    python benchmarks/run.py --quick --systems test           # the harness only, no model
    python benchmarks/run.py --workloads react --systems sgl,vllm --repeat 3  # median of 3 runs

Every system runs the same programs through the Python API on its own backend; ratios are
against the no-cache baseline (`sgl-nocache`) measured in the same run (with `--repeat N`, each
workload runs N times per system, cache flushed before each, and the median run is reported),
and each system's
answers are compared item by item with the first system's (`agree`: the share of identical
outputs; a system below 100% is flagged). Results go to `benchmarks/results/<date>.json` and
one bar chart per metric, `<date>-<metric>.png` (when matplotlib is there)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console
from rich.table import Table
from suite import LEFT_OUT, SIZES, WORKLOADS, Item, Workload
from systems import SYSTEMS, System, TokenCounts, Unavailable, make_system

import sgl_lang
from sgl_lang.errors import SglError

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_SYSTEMS = (
    "sgl", "sgl-torch", "sgl-int4", "sgl-nocache", "transformers", "vllm", "llamacpp",
)  # fmt: skip
BASELINE = "sgl-nocache"
SAMPLE_CHARS = 400
console = Console(stderr=True)


@dataclass
class Result:
    """One workload on one system."""

    system: str
    workload: str
    num_programs: int = 0
    num_failed: int = 0
    seconds: float = 0.0
    programs_per_s: float = 0.0
    latency_p50_s: float = 0.0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_correct: int | None = None
    num_graded: int = 0
    skipped: str | None = None  # why the system could not run this workload
    first_error: str | None = None
    sample_output: str | None = None  # the first program's variables, cut short
    output_digests: list[str | None] = field(default_factory=list)  # per item, None: failed
    agreement: float | None = None  # share of items answered as the first system did
    repeats_programs_per_s: list[float] = field(default_factory=list)  # every run, with --repeat

    @property
    def cache_hit_rate(self) -> float | None:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else None

    @property
    def accuracy(self) -> float | None:
        return self.num_correct / self.num_graded if self.num_correct is not None else None


async def run_workload(system: System, workload: Workload, items: Sequence[Item]) -> Result:
    """Run every item's program at once (at most `system.parallel` in flight) and time it."""
    backend = system.backend()
    program = sgl_lang.load(workload.path, backend=backend, allow_unenforced=True)
    limit = asyncio.Semaphore(system.parallel)
    before = system.token_counts()
    call_counts = [0, 0]

    async def one(item: Item) -> tuple[float, dict[str, Any] | None, str | None]:
        async with limit:
            started = time.perf_counter()
            try:
                result = await program.arun(**item.params)
            except SglError as exc:
                return time.perf_counter() - started, None, exc.render()
            for call in result.calls:
                call_counts[0] += call.prompt_tokens
                call_counts[1] += call.cached_tokens
            return time.perf_counter() - started, result.variables, None

    started = time.perf_counter()
    try:
        outcomes = await asyncio.gather(*(one(item) for item in items))
    finally:
        await backend.close()
    seconds = time.perf_counter() - started
    after = system.token_counts()
    counts = (
        TokenCounts(
            after.num_prompt_tokens - before.num_prompt_tokens,
            after.num_cached_tokens - before.num_cached_tokens,
        )
        if before is not None and after is not None
        else TokenCounts(*call_counts)
    )
    result = Result(
        system.name,
        workload.name,
        len(items),
        seconds=seconds,
        num_prompt_tokens=counts.num_prompt_tokens,
        num_cached_tokens=counts.num_cached_tokens,
    )
    result.programs_per_s = len(items) / seconds
    result.latency_p50_s = statistics.median(latency for latency, _, _ in outcomes)
    result.output_digests = [_digest(output) for _, output, _ in outcomes]
    first_output = outcomes[0][1]
    if first_output is not None:
        result.sample_output = json.dumps(first_output, default=str)[:SAMPLE_CHARS]
    errors = [error for _, _, error in outcomes if error is not None]
    result.num_failed, result.first_error = len(errors), errors[0] if errors else None
    if workload.grade is not None:
        result.num_graded = len(items)
        result.num_correct = sum(
            output is not None and workload.grade(item, output)
            for item, (_, output, _) in zip(items, outcomes, strict=True)
        )
    return result


def median_run(runs: Sequence[Result]) -> Result:
    """The run of median throughput (the lower middle one of an even count), carrying every
    run's programs/s."""
    ordered = sorted(runs, key=lambda r: r.programs_per_s)
    median = ordered[(len(ordered) - 1) // 2]
    median.repeats_programs_per_s = [r.programs_per_s for r in runs]
    return median


def _digest(output: dict[str, Any] | None) -> str | None:
    """A fingerprint of one program's variables, to compare answers between systems."""
    if output is None:
        return None
    text = json.dumps(output, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def agreement(results: Sequence[Result]) -> None:
    """Set each result's `agreement`: the share of its items whose outputs equal those of the
    first system that ran the workload (None for that system and for skipped runs)."""
    reference: dict[str, list[str | None]] = {}
    for r in results:
        if r.skipped is not None or not r.output_digests:
            continue
        mine = reference.setdefault(r.workload, r.output_digests)
        if mine is not r.output_digests:
            same = sum(
                a == b and a is not None for a, b in zip(mine, r.output_digests, strict=False)
            )
            r.agreement = same / len(mine)


def token_counter(system_names: Sequence[str]) -> Any:
    """The model's token counter (for the chat recipe's prompt lengths); words for `test`."""
    if set(system_names) <= {"test"}:
        return lambda text: len(text) // 3  # no model here: alnum noise is ~3 chars a token
    from transformers import AutoTokenizer

    from sgl_lang.runtime.model_loader import converted_dir, embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(converted_dir(embedded_model_path()))
    return lambda text: len(tokenizer(text).input_ids)


def run_all(
    system_names: Sequence[str],
    workloads: Sequence[Workload],
    size: str,
    limit: int | None,
    on_result: Callable[[list[Result]], None],
    repeat: int = 1,
) -> list[Result]:
    """Every workload on every system, one system at a time, `repeat` times each (the median
    run kept); `on_result` sees the results so far after each one (so an interrupted run keeps
    what it measured)."""
    count_tokens = token_counter(system_names)
    items = {w.name: w.items(size, count_tokens, limit) for w in workloads}
    results = []
    for name in system_names:
        system = make_system(name)
        console.print(f"[bold]{name}[/]: {system.description}")
        try:
            started = time.perf_counter()
            system.start()
            console.print(f"  started in {time.perf_counter() - started:.1f} s")
        except Unavailable as exc:
            console.print(f"  [red]unavailable[/]: {exc}")
            results += [Result(name, w.name, skipped=str(exc)) for w in workloads]
            on_result(results)
            continue
        try:
            for workload in workloads:
                reason = system.cannot_run(workload.name)
                if reason is not None:
                    results.append(Result(name, workload.name, skipped=reason))
                    console.print(f"  {workload.name}: skipped ({reason})")
                    on_result(results)
                    continue
                try:
                    runs = []
                    for _ in range(repeat):
                        system.reset()
                        runs.append(
                            asyncio.run(run_workload(system, workload, items[workload.name]))
                        )
                    result = median_run(runs)
                except Exception as exc:  # a broken peer must not lose the other results
                    result = Result(name, workload.name, skipped=f"crashed: {exc!r}"[:300])
                results.append(result)
                agreement(results)
                console.print(f"  {workload.name}: {_summary(result)}")
                on_result(results)
        finally:
            system.close()
    return results


def _summary(r: Result) -> str:
    hit = f"{r.cache_hit_rate:.0%}" if r.cache_hit_rate is not None else "-"
    acc = f"{r.accuracy:.0%}" if r.accuracy is not None else "-"
    failed = f", {r.num_failed} failed: {r.first_error.splitlines()[0]}" if r.first_error else ""
    runs = r.repeats_programs_per_s
    median = f" (median of {', '.join(f'{x:.3f}' for x in runs)})" if len(runs) > 1 else ""
    return (
        f"{r.programs_per_s:.3f} prog/s{median}, p50 {r.latency_p50_s:.2f} s, hit {hit}, "
        f"acc {acc}{failed}"
    )


def baseline_of(results: Sequence[Result]) -> str | None:
    """The system the ratios divide by: the no-cache baseline if it ran, else the first system."""
    names = [r.system for r in results if r.skipped is None]
    return BASELINE if BASELINE in names else (names[0] if names else None)


def ratios(results: Sequence[Result]) -> dict[tuple[str, str], float]:
    """Throughput over the baseline's (`baseline_of`) on the same workload."""
    ran = [r for r in results if r.skipped is None]
    baseline = baseline_of(results)
    base = {r.workload: r.programs_per_s for r in ran if r.system == baseline}
    return {
        (r.system, r.workload): r.programs_per_s / base[r.workload]
        for r in ran
        if base.get(r.workload)
    }


def print_table(results: Sequence[Result]) -> None:
    table = Table(
        "workload",
        "system",
        "prog/s",
        f"× {baseline_of(results)}",
        "p50 s",
        "cache hit",
        "accuracy",
        "agree",
        "failed",
        title="programs per second (higher is better); agree: outputs equal to the first system's",
        caption="\n".join(
            f"{name}: {make_system(name).description}"
            for name in dict.fromkeys(r.system for r in results)
        ),
    )
    by_ratio = ratios(results)
    for r in results:
        if r.skipped is not None:
            table.add_row(
                r.workload, r.system, "-", "-", "-", "-", "-", "-", f"skipped: {r.skipped}"
            )
            continue
        ratio = by_ratio.get((r.system, r.workload))
        table.add_row(
            r.workload,
            r.system,
            f"{r.programs_per_s:.3f}",
            f"{ratio:.2f}" if ratio is not None else "-",
            f"{r.latency_p50_s:.2f}",
            f"{r.cache_hit_rate:.0%}" if r.cache_hit_rate is not None else "-",
            f"{r.accuracy:.0%} ({r.num_correct}/{r.num_graded})" if r.accuracy is not None else "-",
            _agree(r.agreement),
            f"{r.num_failed}/{r.num_programs}" if r.num_failed else "",
        )
    Console(width=160).print(table)


def _agree(share: float | None) -> str:
    """A system's agreement with the first one, flagged when some answers differ."""
    if share is None:
        return "-"
    return f"{share:.0%}" + (" ⚠ differs" if share < 1 else "")


def write_results(results: Sequence[Result], path: Path, size: str) -> None:
    stamp = path.stem.removesuffix(f"-{size}")
    by_ratio = ratios(results)
    document = {
        "date": stamp,
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "quick": size == "quick",
        "sizes": size,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "baseline": baseline_of(results),
        "left_out": LEFT_OUT,
        "results": [
            {
                **asdict(r),
                "cache_hit_rate": r.cache_hit_rate,
                "accuracy": r.accuracy,
                "ratio_vs_baseline": by_ratio.get((r.system, r.workload)),
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def markdown_table(document: dict[str, Any]) -> str:
    """A results JSON as the Markdown table of docs/benchmarks.md."""
    lines = [
        f"| workload | system | programs/s | × {document['baseline']} | p50 latency (s) | cache hit "
        "| accuracy | agree |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in document["results"]:
        if r["skipped"] is not None:
            lines.append(
                f"| {r['workload']} | {r['system']} | – | – | – | – | not run: {r['skipped']} | – |"
            )
            continue
        ratio = r["ratio_vs_baseline"]
        hit, acc = r["cache_hit_rate"], r["accuracy"]
        failed = f", {r['num_failed']}/{r['num_programs']} failed" if r["num_failed"] else ""
        lines.append(
            f"| {r['workload']} | {r['system']} | {r['programs_per_s']:.3f} | "
            + (f"{ratio:.2f}" if ratio is not None else "–")
            + f" | {r['latency_p50_s']:.1f} | "
            + (f"{hit:.0%}" if hit is not None else "–")
            + " | "
            + (f"{acc:.0%} ({r['num_correct']}/{r['num_graded']})" if acc is not None else "–")
            + f"{failed} | {_agree(r.get('agreement'))} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of: {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, of: {', '.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--sizes",
        choices=SIZES,
        default="default",
        help="programs per workload: a CI slice, ~45 min for all systems, or the paper's",
    )
    parser.add_argument("--quick", action="store_true", help="the same as --sizes quick")
    parser.add_argument("--limit", type=int, help="programs per workload (overrides the size)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per workload and system; the median is kept"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--no-chart", action="store_true", help="write no PNG")
    parser.add_argument("--report", type=Path, help="print a results JSON as Markdown; run nothing")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(markdown_table(json.loads(args.report.read_text(encoding="utf-8"))))
        return 0
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    system_names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS] + [
        n for n in system_names if n not in SYSTEMS
    ]
    if unknown:
        parser.error(f"unknown workload or system: {', '.join(unknown)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    size = "quick" if args.quick else args.sizes
    path = args.out / f"{stamp}{'' if size == 'default' else '-' + size}.json"
    results = run_all(
        system_names,
        [WORKLOADS[n] for n in names],
        size,
        args.limit,
        lambda so_far: write_results(so_far, path, size),
        args.repeat,
    )
    print_table(results)
    console.print(f"results: {path}")
    if not args.no_chart:
        from chart import write_chart

        console.print(write_chart(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
