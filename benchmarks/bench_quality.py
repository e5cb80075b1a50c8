"""What quantization costs in answers: MMLU and HellaSwag through the `.sgl` workloads on our
engine with fp32, int8 and int4 weights and on llama.cpp's Q4_1 GGUF, in one run.

    .venv/bin/python benchmarks/bench_quality.py [--quick] [--systems sgl,sgl-int8,...]
        [--mmlu N] [--hellaswag N]

MMLU: N questions (default 200) round-robin over every subject of the data folder (10 in
`../shared/data/mmlu`, `SGL_BENCH_DATA` overrides the location), 5-shot, a 1-token answer.
HellaSwag: N tasks (default 100), 20-shot, `select` over the 4 endings. Per system: accuracy,
and agreement with the first system (fp32): the share of items with the identical prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import WORKLOADS, Item, Workload, mmlu_items, mmlu_subjects
from systems import System, Unavailable, make_system

from sgl_lang.errors import SglError
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader

DEFAULT_SYSTEMS = ("sgl", "sgl-int8", "sgl-int4", "llamacpp")


async def predictions(system: System, workload: Workload, items: Sequence[Item]) -> list[Any]:
    """Each item's `answer` variable (None when its program failed), all items in flight."""
    loader = Loader()
    program = loader.load(workload.path)
    backend = system.backend()
    limit = asyncio.Semaphore(system.parallel)

    async def one(item: Item) -> Any:
        async with limit:
            interpreter = Interpreter(backend, params=item.params, load_program=loader.load_import)
            try:
                return (await interpreter.run_program(program)).variables.get("answer")
            except SglError:
                return None

    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        await backend.close()


def run_system(name: str, suites: dict[str, list[Item]]) -> dict[str, list[Any]] | str:
    """Predictions per workload on one system, or why it could not run."""
    system = make_system(name)
    try:
        system.start()
    except Unavailable as exc:
        return str(exc)
    try:
        answers = {}
        for workload_name, items in suites.items():
            started = time.perf_counter()
            system.reset()
            answers[workload_name] = asyncio.run(
                predictions(system, WORKLOADS[workload_name], items)
            )
            seconds = time.perf_counter() - started
            print(f"  {name} {workload_name}: {len(items)} items in {seconds:.0f} s", flush=True)
        return answers
    finally:
        system.close()


def accuracy(workload: str, items: Sequence[Item], answers: Sequence[Any]) -> float:
    grade = WORKLOADS[workload].grade
    assert grade is not None
    pairs = zip(items, answers, strict=True)
    return sum(a is not None and grade(item, {"answer": a}) for item, a in pairs) / len(items)


def agreement(answers: Sequence[Any], reference: Sequence[Any]) -> float:
    return sum(a == r for a, r in zip(answers, reference, strict=True)) / len(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MMLU questions, 10 HellaSwag")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="first = reference")
    parser.add_argument("--mmlu", type=int, default=200, help="MMLU questions")
    parser.add_argument("--hellaswag", type=int, default=100, help="HellaSwag tasks")
    args = parser.parse_args()
    num_mmlu, num_hellaswag = (20, 10) if args.quick else (args.mmlu, args.hellaswag)
    subjects = mmlu_subjects()
    suites = {
        "mmlu": mmlu_items(subjects, num_mmlu),
        "hellaswag": WORKLOADS["hellaswag"].make_items(num_hellaswag, False, len),
    }
    print(f"MMLU {len(suites['mmlu'])} questions over {len(subjects)} subjects, "
          f"HellaSwag {len(suites['hellaswag'])} tasks")  # fmt: skip
    names = args.systems.split(",")
    print(f"\n{'system':<12}" + "".join(f"{w + ' acc':>15}{'agree':>8}" for w in suites))
    reference: dict[str, list[Any]] | str | None = None
    for name in names:  # each row as soon as its system is done
        answers = run_system(name, suites)
        reference = answers if reference is None else reference
        print(row(name, suites, answers, reference), flush=True)


def row(
    name: str,
    suites: dict[str, list[Item]],
    answers: dict[str, list[Any]] | str,
    reference: dict[str, list[Any]] | str,
) -> str:
    """One system's accuracy and agreement with `reference` per workload."""
    if isinstance(answers, str):
        return f"{name:<12}not run: {answers}"
    cells = ""
    for workload, items in suites.items():
        agree = (
            "-"
            if isinstance(reference, str)
            else (f"{agreement(answers[workload], reference[workload]):.1%}")
        )
        cells += f"{accuracy(workload, items, answers[workload]):>15.1%}{agree:>8}"
    return f"{name:<12}{cells}"


if __name__ == "__main__":
    main()
