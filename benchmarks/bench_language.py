"""Language-side costs: parse + check of a large program, and interpreter overhead per `gen` and per fork branch.

    python benchmarks/bench_language.py [--lines 10000] [--gens 2000] [--branches 1000]

The baseline in the same run is the test backend called directly (no interpreter), so the
ratio column is the interpreter's overhead on top of the cheapest possible backend.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from sgl_lang.backends import get_backend
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import GenRequest, Prompt, Text
from sgl_lang.resolve import check

BLOCK = """\
# helper {n}
def helper_{n}(question, shots=""):
    "{{shots}}Q: {{question}}\\nA:"
    gen answer_{n}(max_tokens=16, stop="\\n", temperature=0)
    if len(answer_{n}) > 3 and answer_{n}.strip() != "":
        return answer_{n}.strip()
    return [x * 2 for x in range(3) if x % 2 == 0]

value_{n} = {{"k": [1, 2.5, "s"], "n": {n}}}
tips_{n} = fork i in [1, 2]:
    "Tip {{i}}: "
    gen detail(max_tokens=8)
"""


def generated_program(num_lines: int) -> str:
    lines_per_block = BLOCK.count("\n")
    return "".join(BLOCK.format(n=n) for n in range(num_lines // lines_per_block + 1))


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


async def direct_calls(num_calls: int) -> None:
    backend = get_backend("test")
    for n in range(num_calls):
        await backend.generate(GenRequest(Prompt((Text(f"Q{n}"),)), max_tokens=4))


def run_source(source: str) -> None:
    asyncio.run(Interpreter(get_backend("test")).run_program(parse_text(source, "bench.sgl")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--gens", type=int, default=2_000)
    parser.add_argument("--branches", type=int, default=1_000)
    args = parser.parse_args()

    source = generated_program(args.lines)
    num_lines = source.count("\n")
    program = None

    def parse_only() -> None:
        nonlocal program
        program = parse_text(source, "big.sgl")

    parse_s = timed(parse_only)
    check_s = timed(lambda: check(program))  # type: ignore[arg-type]

    # Each gen runs on a fresh state, so prompts stay as short as the direct calls' prompts.
    gens_source = (
        'def one(n):\n    "Q{n}"\n    gen a(max_tokens=4)\n'
        f"for n in range({args.gens}):\n    s = run one(n)\n"
    )
    direct_s = timed(lambda: asyncio.run(direct_calls(args.gens)))
    gens_s = timed(lambda: run_source(gens_source))
    fork_source = f'xs = fork i in range({args.branches}):\n    "B{{i}}"\n    gen a(max_tokens=4)\n'
    fork_s = timed(lambda: run_source(fork_source))

    table = Table("measure", "value", "baseline (same run)", "ratio")
    table.add_row(
        f"parse {num_lines:,} lines", f"{parse_s:.2f} s", "target < 1 s", f"{parse_s:.2f}"
    )
    table.add_row(f"check {num_lines:,} lines", f"{check_s:.2f} s", "", "")
    table.add_row(
        f"{args.gens:,} gen statements",
        f"{args.gens / gens_s:,.0f} gen/s",
        f"{args.gens / direct_s:,.0f} direct backend calls/s",
        f"{gens_s / direct_s:.2f}x the time",
    )
    direct_branch_s = direct_s * args.branches / args.gens
    table.add_row(
        f"fork of {args.branches:,} branches",
        f"{fork_s:.2f} s",
        f"{direct_branch_s:.2f} s for {args.branches:,} direct calls",
        f"{fork_s / direct_branch_s:.2f}x the time",
    )
    Console().print(table)


if __name__ == "__main__":
    main()
