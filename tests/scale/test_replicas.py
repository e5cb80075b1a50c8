"""`sgl serve --replicas 2` behind SGLang's router, on the embedded model: the cache-aware
router keeps one worker's prefix-cache hit rate on a few-shot batch where round-robin loses
it; `sgl run --backend http://ROUTER` answers as one worker does, `select`, constraints and
healing included, streamed or not; a worker killed mid-batch costs no row; SIGTERM stops every process. Every
row goes through the `http://` backend. The launcher is started once for the module, and the
last test stops it."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from sgl_lang.backends.http import HttpBackend
from sgl_lang.cli import main
from sgl_lang.protocol import GenRequest, GenResult, Message, Prompt
from sgl_lang.replicas import WORKER_HOST, ReplicaPlan, stop, wait_ready

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
NUM_ROWS, NUM_PREFIXES, MAX_TOKENS = 40, 4, 1
NUM_KILL_ROWS = 16
WORKER_FLAGS = ("--threads", "1", "--kv-cache-gb", "0.1")
CAPABILITIES_PROGRAM = """\
"Review: The battery died after two days.\\nSentiment:"
select label from [" positive", " negative", " neutral"]
"\\nScore out of 10:"
gen score(regex=r" ?[0-9]{1,2}", max_tokens=4)
"\\nThe capital of France is "
gen city(max_tokens=4, stop="\\n")
print(label, score, city)
"""


def _bench() -> ModuleType:
    """benchmarks/bench_router.py: the batch and its hit rates."""
    spec = importlib.util.spec_from_file_location(
        "bench_router", ROOT / "benchmarks" / "bench_router.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _free_ports(count: int) -> int:
    """A port such that it and the `count - 1` after it are free now."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((WORKER_HOST, 0))
            base = int(sock.getsockname()[1])
        if base + count < 65536 and all(_is_free(base + i) for i in range(1, count)):
            return base
    raise RuntimeError("no run of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((WORKER_HOST, port)) != 0


class Launched:
    """`sgl serve --replicas 2` running in a subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.plan = ReplicaPlan(2, WORKER_HOST, _free_ports(3), worker_flags=WORKER_FLAGS)
        command = [sys.executable, "-m", "sgl_lang.cli", "serve", "--replicas", "2"]
        command += ["--port", str(self.plan.port), *WORKER_FLAGS]
        self.log = tmp / "launcher.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def children(self) -> dict[int, str]:
        """The launcher's child processes: pid -> command line."""
        pid = self.process.pid
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {
            int(kid): Path(f"/proc/{kid}/cmdline").read_text().replace("\0", " ") for kid in kids
        }


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    launched = Launched(tmp_path_factory.mktemp("replicas"))
    try:
        wait_ready(f"{launched.plan.router_url}/get_model_info", launched.process)
        yield launched
    finally:
        stop([launched.process])


def test_the_cache_aware_router_keeps_the_hit_rate_of_one_worker(
    launched: Launched, tmp_path: Path
) -> None:
    prompts = bench.few_shot_prompts(NUM_ROWS, NUM_PREFIXES)
    runs = bench.compare(launched.plan, prompts, MAX_TOKENS, tmp_path)
    bench.print_table(runs)
    single, cache_aware, round_robin = runs.values()
    assert [run.num_ok for run in runs.values()] == [NUM_ROWS] * 3
    assert cache_aware.hit_rate >= single.hit_rate - 0.05
    assert round_robin.hit_rate < cache_aware.hit_rate - 0.05


def test_sgl_run_through_the_router_answers_as_one_worker(
    launched: Launched, tmp_path: Path
) -> None:
    batch = ["examples/batch_qa.sgl", "--batch", "examples/data/questions.jsonl"]
    program = tmp_path / "capabilities.sgl"
    program.write_text(CAPABILITIES_PROGRAM, encoding="utf-8")
    answers = {}
    for url in (launched.plan.router_url, launched.plan.worker_urls[0]):
        out = tmp_path / f"{url.rsplit(':', 1)[1]}.jsonl"
        rows = _sgl_run(*batch, "--out", str(out), "--backend", url)
        printed = _sgl_run(str(program), "--backend", url)
        answers[url] = (out.read_text(encoding="utf-8").splitlines(), printed)
    through_router, on_one_worker = answers.values()
    assert through_router == on_one_worker
    (lines, printed), labels = through_router, {"positive", "negative", "neutral"}
    assert "4 of 4 rows ok" in rows and len(lines) == 4 and printed.split()[0] in labels


def test_a_gen_streams_through_the_router_as_on_one_worker(launched: Launched) -> None:
    request = GenRequest(Prompt((Message("user", "Name a color."),), "assistant"), max_tokens=6)

    def streamed(url: str) -> tuple[str, str]:
        backend, pieces = HttpBackend(url), list[str]()

        async def run() -> GenResult:
            try:
                return await backend.generate(request, pieces.append)
            finally:
                await backend.close()

        return asyncio.run(run()).text, "".join(pieces)

    through_router = streamed(launched.plan.router_url)
    assert through_router == streamed(launched.plan.worker_urls[0])
    assert through_router[0] == through_router[1] != ""


def _sgl_run(*args: str) -> str:
    result = CliRunner().invoke(main, ["run", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_worker_killed_mid_batch_costs_no_row(launched: Launched) -> None:
    bench.flush(launched.plan.worker_urls)
    prompts = bench.few_shot_prompts(NUM_KILL_ROWS, NUM_PREFIXES)
    victim_port = f"--port {launched.plan.worker_ports[1]} "
    [victim] = [pid for pid, line in launched.children().items() if victim_port in line]

    async def batch_with_a_kill() -> bench.BatchRun:
        batch = asyncio.ensure_future(
            bench.run_batch(launched.plan.router_url, prompts, MAX_TOKENS)
        )
        while not _has_answered(launched.plan.worker_urls[1]):
            await asyncio.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        return await batch

    run = asyncio.run(batch_with_a_kill())
    assert run.num_ok == NUM_KILL_ROWS


def _has_answered(worker_url: str) -> bool:
    import httpx

    return int(httpx.get(f"{worker_url}/stats", timeout=5.0).json()["num_finished"]) > 0


def test_sigterm_stops_the_router_and_every_worker(launched: Launched) -> None:
    children = launched.children()
    assert any("router" in line for line in children.values())  # it renames itself
    launched.process.send_signal(signal.SIGTERM)
    assert launched.process.wait(30) == 0
    assert not [pid for pid in children if _alive(pid)]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
