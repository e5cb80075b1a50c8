"""A thread that sends work to the engine frees its own OpenMP workers, so that the engine loop's
team is the process's only one (runtime/openmp.py)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
import torch

from sgl_lang.runtime.engine_loop import EngineLoop
from sgl_lang.runtime.openmp import release_thread_team

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="thread ids are read from /proc/self/task"
)


def thread_ids() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def gone(ids: set[str], patience: float) -> bool:
    """Whether every thread of `ids` exits within `patience` seconds."""
    deadline = time.monotonic() + patience
    while ids & thread_ids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not ids & thread_ids()


def workers_after(release: Callable[[], object], patience: float = 10) -> tuple[set[str], bool]:
    """On a fresh thread: run a parallel op (its OpenMP team starts), then `release`; the team's
    worker threads, and whether they exited."""
    result: list[tuple[set[str], bool]] = []

    def run() -> None:
        before = thread_ids()
        torch.ones(1 << 22).exp_().sum()  # parallel over 2 threads: a team of 1 worker
        workers = thread_ids() - before
        release()
        result.append((workers, gone(workers, patience)))

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(previous)
    return result[0]


def test_releasing_a_threads_team_ends_its_workers() -> None:
    workers, exited = workers_after(release_thread_team)
    assert workers  # the parallel op started a worker
    assert exited


def test_workers_stay_without_release() -> None:
    workers, exited = workers_after(lambda: None, patience=0.5)
    assert workers and not exited


class IdleScheduler:
    """What an idle `EngineLoop` asks of its scheduler."""

    has_work = False

    def __init__(self) -> None:
        self.waiting: list[object] = []

    def active_requests(self) -> list[object]:
        return []


def test_sending_to_a_threaded_engine_loop_frees_the_senders_workers() -> None:
    loop = EngineLoop(IdleScheduler(), lambda: False, threaded=True)
    try:
        workers, exited = workers_after(lambda: loop.send(lambda: None))
    finally:
        loop.close()
    assert workers and exited
