"""The Python API: load a `.sgl` program once, then run it from Python as `sgl run` would.

    import sgl_lang

    qa = sgl_lang.load("qa.sgl", backend="local", max_tokens=64)
    result = qa.run(question="What is the capital of France?")
    print(result["answer"], result.text)
    results = qa.run_batch([{"question": q} for q in questions], parallel=8)

See docs/python.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from sgl_lang.calls import CallRecord
from sgl_lang.config import RunConfig, RunOptions
from sgl_lang.protocol import Backend
from sgl_lang.runner import (
    PreparedRun,
    Refused,
    RowResult,
    check_param_names,
    declared_params,
    load_checked,
    open_backend,
    refuse_unenforced,
    row_results,
    run_row,
)
from sgl_lang.stdlib.permissions import Permissions, resolved

T = TypeVar("T")
SETTINGS = tuple(f.name for f in fields(RunConfig))
"""The keyword arguments of `load` that set a runtime option, as in `sgl.toml`."""


@dataclass(frozen=True)
class RunResult:
    """One run of a program: its variables that hold data (also `result[name]`), the main
    state's text and role messages, what it printed, its backend calls (tokens, cached tokens,
    retries), and for a batch row the error that stopped it."""

    variables: dict[str, Any]
    text: str
    messages: list[dict[str, Any]]
    printed: str = ""
    calls: list[CallRecord] = field(default_factory=list)
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __getitem__(self, name: str) -> Any:
        return self.variables[name]

    @classmethod
    def of(cls, row: RowResult) -> RunResult:
        state = row.state
        if state is None:
            return cls({}, "", [], row.printed, row.calls, row.error)
        return cls(row.variables, state.text(), state.messages(), row.printed, row.calls)


class Program:
    """A checked `.sgl` program and how to run it (`load` makes one)."""

    def __init__(self, path: Path, options: RunOptions, backend: Backend | None) -> None:
        self.path = path
        self._options = options
        self._backend = backend
        self._program, self._loader = load_checked(path, options)
        self._config = options.run_config(path)
        if backend is not None:
            refuse_unenforced(
                self._loader, self._program, backend, checked=not options.allow_unenforced
            )

    @property
    def params(self) -> list[str]:
        """The names the program declares with `param`."""
        return declared_params(self._program)

    async def arun(self, **params: Any) -> RunResult:
        """Run the program once with `params`; raises the `SglError` that stops it."""
        check_param_names(self._program, params)
        async with self._prepared() as run:
            with run.permitted():
                row = await run_row(run, params)
        if row.error is not None:
            raise row.error
        return RunResult.of(row)

    def run(self, **params: Any) -> RunResult:
        """`arun` from synchronous code (not from inside a running event loop)."""
        return _sync(self.arun(**params), "run")

    async def arun_batch(
        self, rows: Iterable[Mapping[str, Any]], *, parallel: int = 8
    ) -> list[RunResult]:
        """Run the program once per row of params, `parallel` at once, on one backend, the
        program's constant leading prompt cached first; a failed row keeps its error."""
        async with self._prepared() as run:
            results = await row_results(run, [dict(row) for row in rows], parallel=parallel)
        return [RunResult.of(row) for row in results]

    def run_batch(self, rows: Iterable[Mapping[str, Any]], *, parallel: int = 8) -> list[RunResult]:
        """`arun_batch` from synchronous code."""
        return _sync(self.arun_batch(rows, parallel=parallel), "run_batch")

    @asynccontextmanager
    async def _prepared(self) -> AsyncIterator[PreparedRun]:
        """A run on the given backend, else on one made for this run and closed after it."""
        backend = self._backend or await open_backend(
            self._program, self._loader, self.path, self._options, self._config
        )
        try:
            yield PreparedRun(self._program, self._loader, self._config, backend, self._options)
        finally:
            if self._backend is None:
                await backend.close()


def load(
    path: str | Path,
    *,
    backend: str | Backend | None = None,
    allow_read: bool | Sequence[str | Path] = False,
    allow_write: bool | Sequence[str | Path] = False,
    allow_net: bool | Sequence[str] = False,
    allow_python: bool = False,
    config: str | Path | None = None,
    allow_unenforced: bool = False,
    **settings: Any,
) -> Program:
    """Load and check the program at `path`.

    `backend` is a URI as `--backend` takes (default: the program's own `backend`, else
    `local`) or a `Backend` object (not closed by the program). The `allow_*` arguments are
    the `--allow-*` flags: True grants everything, a list of folders (hosts for `allow_net`)
    only those. `config` is an `sgl.toml` to read instead of the program's; `settings` are its
    keys (`model`, `max_tokens`, `threads`, `kv_cache_gb`, `timeout_s`, ...), overriding it.
    Raises the program's first `SglError` (a check error, a bad setting, an unusable backend)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(f"load() got an unknown setting {unknown[0]!r}; settings: {SETTINGS}")
    if "model" in settings and settings["model"] is not None:
        settings["model"] = Path(settings["model"])
    options = RunOptions(
        backend_uri=backend if isinstance(backend, str) else None,
        permissions=Permissions(
            read=_places(allow_read, resolved),
            write=_places(allow_write, resolved),
            net=_places(allow_net, str),
            python=allow_python,
        ),
        config_path=None if config is None else Path(config),
        settings=settings,
        allow_unenforced=allow_unenforced,
    )
    try:
        return Program(Path(path), options, backend if isinstance(backend, Backend) else None)
    except Refused as refused:
        raise refused.errors[0] from None


def _places(granted: bool | Sequence[Any], place: Any) -> Any:
    if isinstance(granted, bool):
        return granted
    if isinstance(granted, (str, Path)):
        granted = [granted]
    return tuple(place(item) for item in granted)


def _sync(coroutine: Coroutine[Any, Any, T], name: str) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError(f"Program.{name}() inside a running event loop: use `await a{name}(...)`")
