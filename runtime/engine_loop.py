"""The engine's loop: the one thread that touches the scheduler, and the command queue that
every other thread reaches it through."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from sgl_lang.runtime.openmp import release_thread_team
from sgl_lang.runtime.scheduler import Scheduler
from sgl_lang.runtime.stats import EngineHealth

T = TypeVar("T")
Command = Callable[[], object]


class EngineLoop:
    """Runs `step` on a background thread while the scheduler has work, and sleeps until a
    command arrives when it has none. Unthreaded (`threaded=False`), the caller steps and
    commands run at the start of each step (or in `run_commands`). Threaded, a thread that sends
    a command first frees its own OpenMP workers (model loading and token masks leave them), so
    that the loop thread's are the process's only ones (`runtime/openmp.py`).

    Commands run on the loop's thread in the order they were sent. A step fails its own
    requests when it raises (`Engine.step`); an exception that escapes it (the cache could not
    be restored) fails every request (finish reason ERROR) and stops the loop; `send` then
    raises and `health()` says why.
    """

    def __init__(self, scheduler: Scheduler, step: Callable[[], bool], *, threaded: bool) -> None:
        self.scheduler = scheduler
        self._step = step
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None: close
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="sgl-engine", daemon=True)
            self._thread.start()

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    @property
    def stopped(self) -> bool:
        """Closed, or failed: no command will run any more."""
        return self._closed or self._failure is not None

    def health(self) -> EngineHealth:
        """Whether commands still run: not closed, not failed, its thread alive."""
        if self._failure is not None:
            return EngineHealth(
                False, f"the engine stopped after an internal error: {self._failure!r}"
            )
        if self._closed:
            return EngineHealth(False, "the engine is closed")
        if self._thread is not None and not self._thread.is_alive():
            return EngineHealth(False, "the engine thread is not running")
        return EngineHealth(True)

    def send(self, command: Command) -> None:
        """Queue `command` for the loop's thread (thread-safe)."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            release_thread_team()
        if self._failure is not None:
            raise RuntimeError("the engine stopped after an internal error") from self._failure
        if self._closed:
            raise RuntimeError("the engine is closed")
        self._inbox.put(command)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop's thread after every command sent before; block for its result."""
        done: Future[T] = Future()

        def run() -> None:  # the caller gets `fn`'s exception; the loop goes on
            try:
                done.set_result(fn())
            except Exception as exc:
                done.set_exception(exc)

        self.send(run)
        if self._thread is None:
            self.run_commands()
        return done.result()

    def run_commands(self) -> None:
        """Run the commands sent so far (on the loop's thread: at the start of every step)."""
        while not self._closed:
            try:
                self._run(self._inbox.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        """Abort what is still queued or running and stop the loop thread (idempotent)."""
        if not self.stopped:
            self._inbox.put(None)
            if self._thread is None:
                self.run_commands()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        try:
            while not self._closed:
                if self.scheduler.has_work:
                    self._step()
                else:
                    self._run(self._inbox.get())  # idle: sleep until a command arrives
        except BaseException as exc:  # a bug: fail every request loudly, stop the loop
            self._fail(exc)

    def _run(self, command: Command | None) -> None:
        if command is None:
            self._closed = True
            for req in self.scheduler.waiting + self.scheduler.active_requests():
                self.scheduler.abort(req.rid)
        else:
            command()

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self.scheduler.fail_all(f"engine failure: {exc!r}")
