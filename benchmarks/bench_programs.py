"""Programs on the `local` backend: what the prefix cache and the prefix hints buy end to end.

    python benchmarks/bench_programs.py [--data-dir ../shared/data] [--rows 64] [--quick]

Two workloads, each run with the radix cache off and on, and with the prefix hints off and on
(`cache_prefix` before a `--batch`/`run_batch` and before a `fork`), in one process:

- few-shot MMLU: a 5-shot program (the shots are constant text in the program, one dev
  question from each of the first five subjects) run over `--rows` test questions with `--batch`
  semantics (`runner.run_rows`, `--parallel` rows at once), `max_tokens=1` as in SGLang;
- fork 8: a Wikipedia page (`json_decode/questions.jsonl`) then `fork 8` branches that each
  write one short line about it, run for `--docs` pages at once.

Every run starts on an empty prefix cache (`flush_cache`) after a warm-up. The data is read from
`--data-dir` (see its SOURCES.md) and never copied into the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sgl_lang.backends.local import LocalBackend
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.bridge.registry import close_engines
from sgl_lang.config import RunConfig
from sgl_lang.grammar import parse_text
from sgl_lang.loader import Loader
from sgl_lang.protocol import Backend, GenRequest, GenResult, Prompt
from sgl_lang.runner import run_rows
from sgl_lang.runtime.stats import EngineStats

REPO = Path(__file__).resolve().parents[1]
NUM_SHOTS = 5
LETTERS = "ABCD"


def sgl_string(text: str) -> str:
    """`text` as an `.sgl` string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("{", "{{").replace("}", "}}") + '"'


def mmlu_example(row: Sequence[str], with_answer: bool) -> str:
    question, *choices, answer = row
    lines = [question, *(f"{letter}. {c}" for letter, c in zip(LETTERS, choices, strict=True))]
    return "\n".join(lines) + "\nAnswer:" + (f" {answer}\n\n" if with_answer else "")


def mmlu_workload(data_dir: Path, num_rows: int) -> tuple[str, list[dict[str, Any]]]:
    """The few-shot program and its rows (`question`, plus the gold `answer` letter)."""
    dev_files = sorted((data_dir / "mmlu" / "data" / "dev").glob("*_dev.csv"))
    shots = [next(csv.reader(path.open(encoding="utf-8"))) for path in dev_files[:NUM_SHOTS]]
    header = "The following are multiple choice questions (with answers).\n\n"
    few_shot = header + "".join(mmlu_example(row, True) for row in shots)
    program = f'param question\n{sgl_string(few_shot)}\n"{{question}}"\ngen answer(max_tokens=1, heal=false)\n'
    rows: list[dict[str, Any]] = []
    for path in sorted((data_dir / "mmlu" / "data" / "test").glob("*_test.csv")):
        with path.open(encoding="utf-8") as file:
            for row in csv.reader(file):
                rows.append({"question": mmlu_example(row, False), "gold": row[-1]})
    return program, rows[:num_rows]


FORK_PROGRAM = """\
param document
"Here is a page from an encyclopedia.\\n\\n{document}\\n\\n"
"Eight short facts from the page, one per line.\\n"
facts = fork i in range(8):
    "Fact {i + 1}:"
    gen fact(max_tokens=MAX_TOKENS, stop="\\n")
"""


def fork_workload(
    data_dir: Path, num_docs: int, num_chars: int, max_tokens: int
) -> tuple[str, list[dict[str, Any]]]:
    lines = (data_dir / "json_decode" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line)["document"][:num_chars] for line in lines[:num_docs]]
    return FORK_PROGRAM.replace("MAX_TOKENS", str(max_tokens)), [{"document": d} for d in docs]


class WithoutHints(Backend):
    """Forwards everything but the `cache_prefix` hints."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name, self.capabilities = inner, inner.name, inner.capabilities

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        return await self.inner.generate(request, on_chunk)

    async def score(self, prompt: Prompt, choices: Sequence[str], method: str) -> list[float]:
        return await self.inner.score(prompt, choices, method)


@dataclass
class Result:
    workload: str
    cache: bool
    hints: bool
    seconds: float
    num_rows: int
    before: EngineStats
    after: EngineStats
    num_correct: int | None

    @property
    def hit_rate(self) -> float:
        prompt = self.after.num_prompt_tokens - self.before.num_prompt_tokens
        return (self.after.num_cached_tokens - self.before.num_cached_tokens) / max(1, prompt)

    @property
    def mean_decode_batch(self) -> float:
        steps = self.after.num_decode_steps - self.before.num_decode_steps
        return (self.after.num_decode_tokens - self.before.num_decode_tokens) / max(1, steps)

    @property
    def computed_tokens(self) -> int:
        return self.after.num_extend_tokens - self.before.num_extend_tokens


async def run_once(
    workload: str,
    source: str,
    rows: list[dict[str, Any]],
    backend: LocalBackend,
    hints: bool,
    parallel: int,
) -> Result:
    engine = (await backend.bridged()).engine
    engine.flush_cache()
    program = parse_text(source, f"{workload}.sgl")
    target: Backend = backend if hints else WithoutHints(backend)
    before = engine.stats()
    started = time.perf_counter()
    results = await run_rows(
        program, Loader(), target, rows, RunConfig(), parallel=parallel, prefix_hint=hints
    )
    seconds = time.perf_counter() - started
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        raise SystemExit(f"{workload}: {len(errors)} rows failed; first:\n{errors[0]}")
    num_correct = None
    if "gold" in rows[0]:
        answers = [r["output"]["answer"].strip() for r in results]
        num_correct = sum(a == row["gold"] for a, row in zip(answers, rows, strict=True))
    return Result(
        workload,
        engine.config.enable_cache,
        hints,
        seconds,
        len(rows),
        before,
        engine.stats(),
        num_correct,
    )


async def warm_up(backend: LocalBackend) -> None:
    await run_rows(
        parse_text('"Warm up:"\ngen x(max_tokens=4)\n', "warmup.sgl"),
        Loader(),
        backend,
        [{}, {}],
        RunConfig(),
    )


async def bench(args: argparse.Namespace) -> list[Result]:
    workloads = [
        ("few-shot mmlu", *mmlu_workload(args.data_dir, args.rows), args.parallel),
        (
            "fork 8",
            *fork_workload(args.data_dir, args.docs, args.doc_chars, args.fork_tokens),
            args.docs,
        ),
    ]
    results = []
    for cache in (False, True):
        backend = LocalBackend(options=EngineOptions(enable_cache=cache, num_threads=args.threads))
        await warm_up(backend)
        for name, source, rows, parallel in workloads:
            for hints in (False, True):
                result = await run_once(name, source, rows, backend, hints, parallel)
                results.append(result)
                print(f"  {name}: cache {cache}, hints {hints}: {result.seconds:.2f} s", flush=True)
    close_engines()
    return results


def report(results: list[Result], console: Console) -> None:
    table = Table(
        "workload",
        "cache",
        "prefix hints",
        "rows",
        "seconds",
        "rows/s",
        "× vs cache off",
        "hit rate",
        "computed prompt tokens",
        "mean decode batch",
        "accuracy",
    )
    baselines = {r.workload: r for r in results if not r.cache and not r.hints}
    for r in results:
        base = baselines[r.workload]
        table.add_row(
            r.workload,
            "on" if r.cache else "off",
            "on" if r.hints else "off",
            str(r.num_rows),
            f"{r.seconds:.2f}",
            f"{r.num_rows / r.seconds:.2f}",
            f"{base.seconds / r.seconds:.2f}×",
            f"{r.hit_rate:.1%}",
            str(r.computed_tokens),
            f"{r.mean_decode_batch:.2f}",
            "" if r.num_correct is None else f"{r.num_correct}/{r.num_rows}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rows", type=int, default=64, help="MMLU test questions")
    parser.add_argument("--parallel", type=int, default=16, help="MMLU rows at once")
    parser.add_argument("--docs", type=int, default=4, help="fork-8 programs at once")
    parser.add_argument("--doc-chars", type=int, default=2000, help="characters of each page")
    parser.add_argument("--fork-tokens", type=int, default=16, help="max_tokens per branch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="16 rows, 2 pages: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.docs = 16, 2
    if not (args.data_dir / "mmlu").is_dir():
        raise SystemExit(f"no MMLU data under {args.data_dir} (see --data-dir)")
    results = asyncio.run(bench(args))
    report(results, Console(width=200))


if __name__ == "__main__":
    main()
