"""What `sgl run` and `sgl check` do: load, check, pick a backend, interpret, report."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.progress import Progress

from sgl_lang import nodes
from sgl_lang.backends import get_backend
from sgl_lang.backends.local import LocalBackend
from sgl_lang.backends.replay import ReplayBackend
from sgl_lang.calls import DEFAULT_NUM_RETRIES, backend_errors
from sgl_lang.config import RunConfig, resolve_config
from sgl_lang.enforcement import ConstraintSite, constraint_sites
from sgl_lang.errors import SglError, SglNameError, SglValueError, SglWarning
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader
from sgl_lang.prefix import program_prefix
from sgl_lang.protocol import Backend, Capabilities
from sgl_lang.state import State
from sgl_lang.stdlib import builtins, permissions
from sgl_lang.trace import TracingBackend, print_report, totals, trace_report, write_json
from sgl_lang.values import to_repr

DEFAULT_BACKEND = "local"


class Stream(Enum):
    """How generated text is shown: not at all, as it arrives (rich on a terminal, plain text
    when stderr is piped), or all at once when the program ends."""

    OFF = "off"
    LIVE = "live"
    PLAIN = "plain"
    END = "end"


@dataclass(frozen=True)
class RunOptions:
    """How `sgl run` was asked to run. `settings` are the CLI's runtime options (None: not
    given), applied over the config file's (`config_path`, else the `sgl.toml` found);
    `replay` is the replay file of `--replay`; `allow_unenforced` lets constraints the backend
    cannot enforce be checked and retried (`num_retries` times) instead of refusing the run."""

    backend_uri: str | None = None
    permissions: permissions.Permissions = field(default_factory=permissions.Permissions)
    stream: Stream = Stream.OFF
    trace: bool = False
    trace_json: Path | None = None
    config_path: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    replay: Path | None = None
    allow_unenforced: bool = False
    num_retries: int = DEFAULT_NUM_RETRIES


def backend_uri_of(program: nodes.Program, override: str | None) -> str:
    """The CLI's `--backend`, else the program's `backend "URI"`, else the default."""
    if override:
        return override
    for stmt in program.body:
        if isinstance(stmt, nodes.BackendDecl):
            return stmt.uri
    return DEFAULT_BACKEND


def make_backend(uri: str, config: RunConfig) -> Backend:
    """The backend of `uri`; a `local` one gets the config's engine options (and its model,
    unless the URI names one)."""
    with backend_errors():
        backend = get_backend(uri)
    if isinstance(backend, LocalBackend):
        backend = backend.configured(config.engine_options, backend.model_path or config.model)
    return backend


def with_replay(backend: Backend, path: Path | None) -> Backend:
    """`backend`, answering repeated requests from the replay file at `path` when one is given."""
    if path is None:
        return backend
    return ReplayBackend(
        backend, path, lambda message: print(f"warning: {message}", file=sys.stderr)
    )


def _declared_params(program: nodes.Program) -> list[str]:
    return [stmt.name for stmt in program.body if isinstance(stmt, nodes.ParamDecl)]


def _errors_only(problems: list[SglError]) -> list[SglError]:
    return [p for p in problems if not isinstance(p, SglWarning)]


def _report(problems: Sequence[SglError]) -> None:
    for problem in problems:
        print(problem.render(), file=sys.stderr)


class CheckReport(NamedTuple):
    """What `sgl check` finds: every problem (errors and warnings), and with a backend one
    report line per constraint site (`ConstraintSite.report_line`)."""

    problems: list[SglError]
    site_lines: list[str]


def check_report(paths: Sequence[Path], backend_uri: str | None = None) -> CheckReport:
    """Check the given files; with `backend_uri`, also what that backend enforces (a site it
    cannot enforce is an error)."""
    loader = Loader()
    with backend_errors():
        backend = get_backend(backend_uri) if backend_uri else None
    report = CheckReport([], [])
    for path in paths:
        try:
            program = loader.load(path)
        except SglError as error:
            report.problems.append(error)
            continue
        report.problems.extend(loader.check(program))
        if backend is not None:
            sites = program_sites(loader, program, backend.capabilities)
            report.site_lines.extend(site.report_line(backend.name) for site in sites)
            report.problems.extend(site.error(backend.name) for site in sites if not site.enforced)
    return report


def check_files(paths: Sequence[Path], backend_uri: str | None = None) -> list[SglError]:
    """All problems (errors and warnings) of the given files."""
    return check_report(paths, backend_uri).problems


def program_sites(
    loader: Loader, program: nodes.Program, capabilities: Capabilities
) -> list[ConstraintSite]:
    """The constraint sites of `program` and of the functions of the programs it imports."""
    sites = constraint_sites(program, capabilities)
    for imported in loader.imported(program):
        sites.extend(constraint_sites(imported, capabilities, imported=True))
    return sites


def _unenforced(
    loader: Loader, program: nodes.Program, backend: Backend, options: RunOptions
) -> list[SglError]:
    """The errors that stop a run: constraints `backend` cannot enforce (none when allowed)."""
    if options.allow_unenforced:
        return []
    sites = program_sites(loader, program, backend.capabilities)
    return [site.error(backend.name) for site in sites if not site.enforced]


# ---------------------------------------------------------------- one run


async def run_file(path: Path, params: dict[str, Any], options: RunOptions) -> int:
    """Run one program; prints errors, returns the exit code."""
    loader = Loader()
    program = loader.load(path)
    unknown = sorted(set(params) - set(_declared_params(program)))
    if unknown:
        declared = ", ".join(_declared_params(program)) or "none"
        raise SglNameError(f"unknown param `{unknown[0]}` (the program declares: {declared})")
    errors = _errors_only(loader.check(program, params))
    if errors:
        _report(errors)
        return 1
    config = resolve_config(path, options.config_path, options.settings)
    uri = backend_uri_of(program, options.backend_uri)
    backend = TracingBackend(with_replay(make_backend(uri, config), options.replay))
    refused = _unenforced(loader, program, backend, options)
    if refused:
        _report(refused)
        await backend.close()
        return 1
    streamer = _Streamer(options.stream)
    interpreter = _interpreter(backend, loader, params, config, streamer.chunk, options.num_retries)
    if (options.trace or options.trace_json) and isinstance(backend.inner, LocalBackend):
        await backend.inner.engine()  # load the model first, so call times are the calls'
    started = time.perf_counter()
    token = builtins.output.set(streamer.stdout)
    try:
        await _run_with_permissions(interpreter, program, options)
    finally:
        builtins.output.reset(token)
        streamer.finish(interpreter.states[0] if interpreter.states else None)
        if options.trace or options.trace_json:
            report = trace_report(interpreter, backend, time.perf_counter() - started)
            if options.trace:
                print_report(report, Console(stderr=True))
            if options.trace_json:
                write_json(report, options.trace_json)
        await backend.close()
    return 0


def _interpreter(
    backend: Backend,
    loader: Loader,
    params: dict[str, Any],
    config: RunConfig,
    on_chunk: Callable[[str], None] | None,
    num_retries: int,
) -> Interpreter:
    return Interpreter(
        backend,
        params=params,
        default_max_tokens=config.max_tokens or 256,
        num_retries=num_retries,
        on_chunk=on_chunk,
        on_warning=lambda message: print(f"warning: {message}", file=sys.stderr),
        load_program=loader.load_import,
    )


async def _run_with_permissions(
    interpreter: Interpreter, program: nodes.Program, options: RunOptions
) -> State:
    token = permissions.current.set(options.permissions)
    try:
        return await interpreter.run_program(program)
    finally:
        permissions.current.reset(token)


class _Streamer:
    """Shows the main state's generated text on stderr (`print` output stays on stdout)."""

    def __init__(self, mode: Stream) -> None:
        self.mode = mode
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.mid_line = False  # streamed text not yet ended by a line break
        self.stdout = _AfterStream(self)

    @property
    def chunk(self) -> Callable[[str], None] | None:
        return self._chunk if self.mode in (Stream.LIVE, Stream.PLAIN) else None

    def _chunk(self, text: str) -> None:
        if self.mode is Stream.LIVE:
            self.console.print(text, style="green", end="")
        else:
            sys.stderr.write(text)
            sys.stderr.flush()
        self.mid_line = not text.endswith("\n")

    def break_line(self) -> None:
        if self.mid_line:
            self.mid_line = False
            sys.stderr.write("\n")
            sys.stderr.flush()

    def finish(self, main: State | None) -> None:
        """End the streamed line; in END mode, show the main state's generated text now."""
        if self.mode is Stream.END and main is not None:
            text = "".join(piece.text for piece in main.pieces if piece.generated)
            if text:
                sys.stderr.write(text + "\n")
        self.break_line()


class _AfterStream(io.TextIOBase):
    """stdout for `print`: a streamed line on the same terminal is ended first."""

    def __init__(self, streamer: _Streamer) -> None:
        self.streamer = streamer

    def write(self, text: str) -> int:
        self.streamer.break_line()
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


# ---------------------------------------------------------------- batch


async def run_batch_file(
    path: Path, batch: Path, out: Path, params: dict[str, Any], parallel: int, options: RunOptions
) -> int:
    """Run a program once per JSONL row; failing rows are written with their error."""
    loader = Loader()
    program = loader.load(path)
    errors = _errors_only(loader.check(program))
    if errors:
        _report(errors)
        return 1
    inputs = _read_rows(batch)
    rows = [{**params, **row} for row in inputs]
    config = resolve_config(path, options.config_path, options.settings)
    uri = backend_uri_of(program, options.backend_uri)
    backend = with_replay(make_backend(uri, config), options.replay)
    refused = _unenforced(loader, program, backend, options)
    if refused:
        _report(refused)
        await backend.close()
        return 1
    started = time.perf_counter()
    try:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("running", total=len(rows))
            results = await run_rows(
                program,
                loader,
                backend,
                rows,
                config,
                parallel=parallel,
                permissions_=options.permissions,
                num_retries=options.num_retries,
                on_row_done=lambda: progress.advance(task),
            )
        if options.trace or options.trace_json:
            run_totals = {"totals": totals(backend, time.perf_counter() - started)}
            if options.trace:
                Console(stderr=True).print_json(data=run_totals)
            if options.trace_json:
                write_json(run_totals, options.trace_json)
    finally:
        await backend.close()
    with out.open("w", encoding="utf-8") as file:
        for index, (row, result) in enumerate(zip(inputs, results, strict=True)):
            file.write(json.dumps({"index": index, "input": row, **result}, ensure_ascii=False))
            file.write("\n")
    num_failed = sum(result["error"] is not None for result in results)
    print(f"{len(rows) - num_failed} of {len(rows)} rows ok; results in {out}", file=sys.stderr)
    return 1 if num_failed else 0


async def run_rows(
    program: nodes.Program,
    loader: Loader,
    backend: Backend,
    rows: Sequence[dict[str, Any]],
    config: RunConfig,
    *,
    parallel: int = 8,
    prefix_hint: bool = True,
    permissions_: permissions.Permissions | None = None,
    num_retries: int = DEFAULT_NUM_RETRIES,
    on_row_done: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `program` once per row of params, at most `parallel` at once; each result is
    `{"output", "printed", "error"}`. With `prefix_hint`, the program's constant leading
    prompt (`prefix.program_prefix`) is sent to the backend once before the rows."""
    prefix = program_prefix(program)
    if prefix_hint and len(rows) > 1 and not prefix.is_empty:
        with backend_errors():
            await backend.cache_prefix(prefix.prompt)
    limit = asyncio.Semaphore(parallel)
    granted = permissions_ or permissions.Permissions()

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        async with limit:
            token = permissions.current.set(granted)
            try:
                return await _run_row(program, loader, backend, row, config, num_retries)
            finally:
                permissions.current.reset(token)
                if on_row_done is not None:
                    on_row_done()

    return list(await asyncio.gather(*(one(row) for row in rows)))


async def _run_row(
    program: nodes.Program,
    loader: Loader,
    backend: Backend,
    row: dict[str, Any],
    config: RunConfig,
    num_retries: int,
) -> dict[str, Any]:
    printed = io.StringIO()
    token = builtins.output.set(printed)
    params = {name: row[name] for name in _declared_params(program) if name in row}
    try:
        errors = _errors_only(loader.check(program, params))
        if errors:
            raise errors[0]
        interpreter = _interpreter(backend, loader, params, config, None, num_retries)
        state = await interpreter.run_program(program)
        return {"output": _jsonable(state.variables), "printed": printed.getvalue(), "error": None}
    except SglError as error:
        return {"output": None, "printed": printed.getvalue(), "error": error.render()}
    finally:
        builtins.output.reset(token)


def _read_rows(batch: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(batch.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SglValueError(f"{batch}:{number}: not a JSON line: {exc}") from None
        if not isinstance(row, dict):
            raise SglValueError(f"{batch}:{number}: each line must be a JSON object of params")
        rows.append(row)
    return rows


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for name, value in values.items():
        try:
            json.dumps(value)
            result[name] = value
        except (TypeError, ValueError):
            result[name] = to_repr(value)
    return result
