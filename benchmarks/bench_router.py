"""Prefix-cache hit rate and throughput of a few-shot batch: one `sgl serve` worker vs two
behind SGLang's router, cache-aware vs round-robin (docs/scale.md).

    .venv/bin/python benchmarks/bench_router.py [--rows 40] [--prefixes 4] [--max-tokens 4]

The batch is `rows` questions over `prefixes` few-shot prompts (each a long constant block of
examples), in prefix order, as a batch file is; every row is a `gen` through the `http://`
backend (`sgl run --backend http://ROUTER`: through the router, each request in the envelope of
docs/server.md), `parallel` at a time. The hit rate is the batch's cached prompt tokens over its
prompt tokens; every worker's cache is flushed before each configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import httpx

from sgl_lang.backends.http import HttpBackend
from sgl_lang.protocol import BackendError, GenRequest, GenResult, Prompt, Text
from sgl_lang.replicas import (
    WORKER_HOST,
    ReplicaPlan,
    free_port,
    router_command,
    spawn,
    stop,
    wait_ready,
)

TOPICS = {
    "capitals": [("Italy", "Rome"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Peru", "Lima")],
    "opposites": [("hot", "cold"), ("up", "down"), ("early", "late"), ("full", "empty")],
    "plurals": [("mouse", "mice"), ("child", "children"), ("goose", "geese"), ("foot", "feet")],
    "colors": [("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red")],
}
QUESTIONS = ["France", "left", "tooth", "sky", "Spain", "open", "man", "sun", "Chile", "wet"]
NUM_REPEATS = 6  # each topic's examples, repeated: a prefix of a few hundred tokens


def few_shot_prompts(num_rows: int, num_prefixes: int) -> list[str]:
    """`num_rows` prompts: a block of rows per few-shot prefix, each row its own question."""
    topics = list(TOPICS.items())[:num_prefixes]
    prompts = []
    for row in range(num_rows):
        topic, shots = topics[row * len(topics) // num_rows]
        examples = "".join(f"Q: {q}?\nA: {a}\n\n" for q, a in shots) * NUM_REPEATS
        question = QUESTIONS[row % len(QUESTIONS)]
        prompts.append(f"Task: {topic}. Answer like the examples.\n\n{examples}Q: {question}?\nA:")
    return prompts


class BatchRun(NamedTuple):
    """What a batch through one URL measured."""

    num_ok: int
    prompt_tokens: int
    cached_tokens: int
    seconds: float

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


async def run_batch(
    url: str, prompts: Sequence[str], max_tokens: int, parallel: int = 4
) -> BatchRun:
    """Generate every prompt on `url` through the `http://` backend, as `sgl run --backend URL`
    does (greedy, healed), `parallel` at a time; failed rows are not counted."""
    backend = HttpBackend(url)
    slots = asyncio.Semaphore(parallel)
    started = time.perf_counter()

    async def one(text: str) -> GenResult | None:
        async with slots:
            try:
                return await backend.generate(GenRequest(Prompt((Text(text),)), max_tokens))
            except BackendError:
                return None

    try:
        results = await asyncio.gather(*(one(text) for text in prompts))
    finally:
        await backend.close()
    done = [result for result in results if result is not None]
    return BatchRun(
        len(done),
        sum(result.prompt_tokens for result in done),
        sum(result.cached_tokens for result in done),
        time.perf_counter() - started,
    )


def flush(worker_urls: Sequence[str]) -> None:
    """Empty every worker's prefix cache."""
    for url in worker_urls:
        httpx.post(f"{url}/flush_cache", timeout=60.0).raise_for_status()


def compare(
    plan: ReplicaPlan, prompts: Sequence[str], max_tokens: int, log_dir: Path
) -> dict[str, BatchRun]:
    """The batch on worker 1 alone, then through a cache-aware and a round-robin router over
    the running workers of `plan` (the routers started here, on free ports, logging to
    `log_dir`)."""
    runs: dict[str, BatchRun] = {}
    flush(plan.worker_urls)
    runs["1 worker"] = asyncio.run(run_batch(plan.worker_urls[0], prompts, max_tokens))
    for policy in ("cache_aware", "round_robin"):
        port = free_port()
        command = router_command(WORKER_HOST, port, policy, plan.worker_urls, free_port())
        router, router_url = spawn(command, log_dir, policy), f"http://{WORKER_HOST}:{port}"
        try:
            wait_ready(f"{router_url}/get_model_info", router)
            flush(plan.worker_urls)
            label = f"{plan.num_replicas} workers, {policy}"
            runs[label] = asyncio.run(run_batch(router_url, prompts, max_tokens))
        finally:
            stop([router])
    return runs


def print_table(runs: dict[str, BatchRun]) -> None:
    print(f"{'configuration':<28} {'rows ok':>7} {'hit rate':>9} {'seconds':>8} {'rows/s':>7}")
    for label, run in runs.items():
        rate = run.num_ok / run.seconds
        print(f"{label:<28} {run.num_ok:>7} {run.hit_rate:>8.1%} {run.seconds:>8.1f} {rate:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--prefixes", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()
    worker_flags = ("--threads", str(args.threads), "--kv-cache-gb", "0.1")
    plan = ReplicaPlan(2, "127.0.0.1", free_port(), worker_flags=worker_flags)
    with tempfile.TemporaryDirectory() as folder:
        commands = [plan.worker_command(port) for port in plan.worker_ports]
        workers = [spawn(c, Path(folder), f"worker-{i}") for i, c in enumerate(commands)]
        try:
            for url, worker in zip(plan.worker_urls, workers, strict=True):
                wait_ready(f"{url}/health", worker)
            prompts = few_shot_prompts(args.rows, args.prefixes)
            runs = compare(plan, prompts, args.max_tokens, Path(folder))
        finally:
            stop(workers)
    print_table(runs)


if __name__ == "__main__":
    main()
