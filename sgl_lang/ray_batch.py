"""`sgl run --batch IN --out OUT --ray [ADDRESS]`: a batch's rows on Ray actors, each holding
its own backend (for `local`, its own engine), rows sharing a prompt prefix on one actor
(docs/scale.md). OUT, the progress bar and signals are those of a plain batch (`runner`)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections import deque
from collections.abc import Callable, Sequence
from math import ceil
from pathlib import Path
from typing import Any

from sgl_lang.config import RunOptions
from sgl_lang.errors import SglBackendError
from sgl_lang.prefix import program_prefix, row_prefix
from sgl_lang.runner import PreparedRun, prepare_run, run_rows

MIN_SHARED_CHARS = 64  # text beyond the program's own prefix that makes rows one group


def prefix_groups(prefix_texts: Sequence[str], common: str = "") -> list[list[int]]:
    """The rows' positions grouped by shared prefix: rows whose prefixes share
    `MIN_SHARED_CHARS` more than `common` (what every row shares) are one group."""
    order = sorted(range(len(prefix_texts)), key=lambda position: prefix_texts[position])
    threshold = len(common) + MIN_SHARED_CHARS
    groups: list[list[int]] = []
    for position in order:
        text = prefix_texts[position]
        if groups and _shared_len(prefix_texts[groups[-1][0]], text) >= threshold:
            groups[-1].append(position)
        else:
            groups.append([position])
    if groups and all(len(group) == 1 for group in groups):  # nothing shared: one group
        return [sorted(position for group in groups for position in group)]
    return [sorted(group) for group in groups]


def assign(groups: Sequence[Sequence[int]], num_actors: int) -> list[list[int]]:
    """Row positions per actor: each group whole on one actor, but a group larger than an even
    share is cut into shares (each actor then computes that prefix once); largest first, to
    the least loaded actor."""
    num_rows = sum(len(group) for group in groups)
    share = max(1, ceil(num_rows / num_actors))
    chunks = [
        list(group[start : start + share])
        for group in groups
        for start in range(0, len(group), share)
    ]
    queues: list[list[int]] = [[] for _ in range(num_actors)]
    for chunk in sorted(chunks, key=len, reverse=True):
        min(queues, key=len).extend(chunk)
    return queues


class RowActor:
    """A Ray actor running rows of one program on its own backend (`prepare_run` in the
    actor's process); `stats()` says which rows it ran, and its process id."""

    def __init__(self, program_path: Path, options: RunOptions) -> None:
        self.program_path = program_path
        self.options = options
        self.positions: list[int] = []
        self._run: PreparedRun | None = None
        self._lock = asyncio.Lock()

    async def run_row(self, position: int, params: dict[str, Any]) -> dict[str, Any]:
        """The result of one row (`{"output", "printed", "error"}`)."""
        run = await self._prepared()
        [result] = await run_rows(
            run.program, run.loader, run.backend, [params], run.config, options=run.options
        )
        self.positions.append(position)
        return result

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "positions": list(self.positions)}

    async def _prepared(self) -> PreparedRun:
        async with self._lock:
            if self._run is None:
                self._run = await prepare_run(self.program_path, self.options)
            return self._run


class RayRows:
    """The `runner.RowsRunner` of `--ray`: `num_actors` `RowActor`s (None: one per
    `cpus_per_actor` CPUs of the cluster) on the Ray cluster at `address` (None: a local one
    started here). An actor that dies fails only the rows it was running (at most `parallel`),
    which run again on another actor with the rest of its queue."""

    def __init__(
        self,
        program_path: Path,
        options: RunOptions,
        address: str | None = None,
        num_actors: int | None = None,
        cpus_per_actor: int = 1,
    ) -> None:
        self.program_path = program_path.resolve()
        self.options = options
        self.address = address
        self.num_actors = num_actors
        self.cpus_per_actor = cpus_per_actor
        self.actors: list[Any] = []  # the Ray actor handles, once running
        self.num_retried = 0  # rows that failed with their actor and ran again
        self.actor_stats: list[dict[str, Any]] = []  # `RowActor.stats()` of the survivors

    async def __call__(
        self,
        run: PreparedRun,
        rows: list[dict[str, Any]],
        parallel: int,
        on_result: Callable[[int, dict[str, Any]], None],
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise SglBackendError("--ray needs Ray", hint="pip install 'sgl-lang[ray]'")
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, log_to_driver=False)
        self.actors = self._start_actors(ray)
        try:
            common = program_prefix(run.program).prompt.plain_text()
            texts = [row_prefix(run.program, row).prompt.plain_text() for row in rows]
            queues = assign(prefix_groups(texts, common), len(self.actors))
            living = await self._drain(ray, rows, [deque(q) for q in queues], parallel, on_result)
            self.actor_stats = await asyncio.gather(
                *(self.actors[a].stats.remote() for a in living)
            )
        finally:
            for actor in self.actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def _start_actors(self, ray: Any) -> list[Any]:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        num_actors = self.num_actors or max(1, cpus // self.cpus_per_actor)
        remote = ray.remote(num_cpus=self.cpus_per_actor)(RowActor)
        return [remote.remote(self.program_path, self.options) for _ in range(num_actors)]

    async def _drain(
        self,
        ray: Any,
        rows: list[dict[str, Any]],
        queues: list[deque[int]],
        parallel: int,
        on_result: Callable[[int, dict[str, Any]], None],
    ) -> list[int]:
        """Keep `parallel` rows running on every living actor until all rows ended; the
        actors still living then."""
        running: dict[asyncio.Future[Any], tuple[int, int]] = {}
        living = set(range(len(self.actors)))

        def fill(actor: int) -> None:
            busy = sum(1 for owner, _ in running.values() if owner == actor)
            for _ in range(parallel - busy):
                if not queues[actor]:
                    return
                position = queues[actor].popleft()
                ref = self.actors[actor].run_row.remote(position, rows[position])
                running[asyncio.ensure_future(_awaited(ref))] = (actor, position)

        for actor in living:
            fill(actor)
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                retry = self._collect(ray, done, running, living, queues, on_result)
                if retry:
                    if not living:
                        raise ray.exceptions.RayActorError("every Ray actor of the batch died")
                    min((queues[a] for a in living), key=len).extend(retry)
                for actor in living:
                    fill(actor)
        finally:
            for task in running:
                task.cancel()
        return sorted(living)

    def _collect(
        self,
        ray: Any,
        done: set[asyncio.Future[Any]],
        running: dict[asyncio.Future[Any], tuple[int, int]],
        living: set[int],
        queues: list[deque[int]],
        on_result: Callable[[int, dict[str, Any]], None],
    ) -> list[int]:
        """Report the rows in `done`; the rows to run again (those of actors that died, and
        the queues of these actors)."""
        retry: list[int] = []
        for task in done:
            actor, position = running.pop(task)
            try:
                result = task.result()
            except ray.exceptions.RayActorError:
                living.discard(actor)
                retry.append(position)
                retry.extend(queues[actor])
                queues[actor].clear()
                self.num_retried += 1
            else:
                on_result(position, result)
        return retry


def _shared_len(first: str, second: str) -> int:
    """The length of the common start of two strings."""
    pairs = enumerate(zip(first, second, strict=False))
    return next((i for i, (a, b) in pairs if a != b), min(len(first), len(second)))


async def _awaited(ref: Any) -> Any:
    return await ref
