"""What `sgl run` and `sgl check` do: load, check, pick a backend, interpret, report.

A run reads: the command line's `RunOptions` -> `prepare_run` (the program loaded and checked,
its runtime config resolved, its backend made and wrapped) -> `PreparedRun.interpreter` -> run.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from rich.console import Console
from rich.progress import Progress

from sgl_lang import nodes
from sgl_lang.backends import get_backend, local_target, reached_url
from sgl_lang.backends.replay import ReplayBackend
from sgl_lang.batch import Output, Row, Stopper, read_rows, recorded_rows
from sgl_lang.calls import DEFAULT_NUM_RETRIES, CallRecord, backend_errors
from sgl_lang.config import RunConfig, RunOptions, Stream
from sgl_lang.enforcement import ConstraintSite, capability_errors, constraint_sites
from sgl_lang.errors import (
    SglError,
    SglNameError,
    SglPermissionError,
    SglWarning,
)
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader
from sgl_lang.objects import Function, Schema
from sgl_lang.prefix import program_prefix
from sgl_lang.protocol import Backend, BackendError, Capabilities
from sgl_lang.state import State
from sgl_lang.stdlib import builtins, permissions
from sgl_lang.trace import TracingBackend, print_report, totals, trace_report, write_json
from sgl_lang.trace_html import write_html
from sgl_lang.values import to_repr

DEFAULT_BACKEND = "local"


def backend_uri_of(program: nodes.Program, override: str | None) -> str:
    """The CLI's `--backend`, else the program's `backend "URI"`, else the default."""
    if override:
        return override
    declared = program_backend(program)
    return declared.uri if declared is not None else DEFAULT_BACKEND


def program_backend(program: nodes.Program) -> nodes.BackendDecl | None:
    """The program's own `backend "URI"` statement, if it has one."""
    return next((s for s in program.body if isinstance(s, nodes.BackendDecl)), None)


def make_backend(uri: str, config: RunConfig, *, user_chosen: bool = True) -> Backend:
    """The backend of `uri`; one that runs an engine here gets the config's engine options
    (and its model, unless the URI names one). A URI a program wrote (`user_chosen` False)
    gets none of the user's API keys but for its provider's own host."""
    with backend_errors():
        return get_backend(
            uri, engine_options=config.engine_options, model=config.model, user_chosen=user_chosen
        )


def check_program_backend(
    declared: nodes.BackendDecl, program_dir: Path, granted: permissions.Permissions
) -> None:
    """A program's own `backend "URI"` reaches only what the run grants: a server (any but
    the engine of this process) needs `--allow-net` for its host, a model or replies file
    outside the program's folder `--allow-read`. Raises `SglPermissionError` at the
    statement; a malformed URI is left to `make_backend`."""
    try:
        url, file = reached_url(declared.uri), local_target(declared.uri)
    except BackendError:
        return
    if url is not None and not granted.allows("net", url):
        host = permissions.host_of(url)
        raise SglPermissionError(
            f"the program's backend `{declared.uri}` sends prompts to `{host}`: "
            f"that needs {granted.needed('net')}",
            declared.span,
            hint=f"give --allow-net={host}, or choose the backend yourself with --backend",
        )
    if file is not None:
        path = permissions.resolved(file)
        if not path.is_relative_to(program_dir) and not granted.allows("read", path):
            raise SglPermissionError(
                f"the program's backend `{declared.uri}` reads `{path}`, outside the "
                f"program's folder: that needs {granted.needed('read')}",
                declared.span,
                hint="choose the backend yourself with --backend",
            )


def with_replay(backend: Backend, path: Path | None) -> Backend:
    """`backend`, answering repeated requests from the replay file at `path` when one is given."""
    if path is None:
        return backend
    return ReplayBackend(backend, path, _warn)


def new_interpreter(
    backend: Backend,
    config: RunConfig,
    loader: Loader,
    params: dict[str, Any],
    *,
    num_retries: int = DEFAULT_NUM_RETRIES,
    on_chunk: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Interpreter:
    """An interpreter on `backend` as runs are set up: `gen`'s default `max_tokens` and the
    resource limits from `config`, imports loaded by `loader`, warnings to `on_warning`
    (default: stderr)."""
    return Interpreter(
        backend,
        params=params,
        default_max_tokens=config.max_tokens or 256,
        num_retries=num_retries,
        on_chunk=on_chunk,
        on_warning=on_warning or _warn,
        load_program=loader.load_import,
        limits=config.limits,
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def declared_params(program: nodes.Program) -> list[str]:
    """The names `program` declares with `param`, in order."""
    return [stmt.name for stmt in program.body if isinstance(stmt, nodes.ParamDecl)]


def _errors_only(problems: list[SglError]) -> list[SglError]:
    return [p for p in problems if not isinstance(p, SglWarning)]


def _report(problems: Sequence[SglError]) -> None:
    for problem in problems:
        print(problem.render(), file=sys.stderr)


# ---------------------------------------------------------------- check


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
            report.problems.extend(unenforced_errors(sites, backend))
            report.problems.extend(program_capability_errors(loader, program, backend))
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


def program_capability_errors(
    loader: Loader, program: nodes.Program, backend: Backend
) -> list[SglError]:
    """What `backend` cannot run at all in `program` and the programs it imports (images,
    tools): refused even with `--allow-unenforced`."""
    errors: list[SglError] = []
    errors.extend(capability_errors(program, backend.capabilities, backend.name))
    for imported in loader.imported(program):
        errors.extend(
            capability_errors(imported, backend.capabilities, backend.name, imported=True)
        )
    return errors


def unenforced_errors(sites: Sequence[ConstraintSite], backend: Backend) -> list[SglError]:
    """One error per constraint site that `backend` cannot enforce."""
    return [site.error(backend.name) for site in sites if not site.enforced]


# ---------------------------------------------------------------- preparing a run


class Refused(Exception):
    """The errors that stop a program before it runs: check errors, and constraints its
    backend cannot enforce."""

    def __init__(self, errors: list[SglError]) -> None:
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors


@dataclass(frozen=True)
class PreparedRun:
    """A program ready to run (`prepare_run`): loaded and checked (`loader` loads its
    imports), with its runtime config and its backend, around which the replay file and
    tracing are wrapped as the options ask (`tracer`: the tracing wrapper, when tracing).
    The caller closes `backend`."""

    program: nodes.Program
    loader: Loader
    config: RunConfig
    backend: Backend
    options: RunOptions
    tracer: TracingBackend | None = None

    def interpreter(
        self, params: dict[str, Any], on_chunk: Callable[[str], None] | None = None
    ) -> Interpreter:
        """A new interpreter for the program, with `params` as its `param` values."""
        return new_interpreter(
            self.backend,
            self.config,
            self.loader,
            params,
            num_retries=self.options.num_retries,
            on_chunk=on_chunk,
        )

    @contextmanager
    def permitted(self) -> Iterator[None]:
        """Within: the stdlib grants what the options permit."""
        token = permissions.current.set(self.options.permissions)
        try:
            yield
        finally:
            permissions.current.reset(token)


async def prepare_run(
    path: Path, options: RunOptions, params: dict[str, Any] | None = None
) -> PreparedRun:
    """Load and check the program at `path` with `params` (None: a batch's, checked row by
    row), resolve its runtime config, make its backend (`options.backend_uri`, else the
    program's) and wrap it. With tracing, the backend is warmed up (the model loaded) so that
    the calls' times are their own. Raises `Refused`, and the `SglError` of an unknown param,
    a bad config file or a backend that cannot be made."""
    program, loader = load_checked(path, options, params)
    config = options.run_config(path)
    backend = await open_backend(program, loader, path, options, config)
    try:
        backend = with_replay(backend, options.replay)
        tracer = TracingBackend(backend) if options.tracing else None
        if tracer is not None:
            with backend_errors():
                await tracer.warm_up()
    except BaseException:
        await backend.close()
        raise
    return PreparedRun(program, loader, config, tracer or backend, options, tracer)


def load_checked(
    path: Path, options: RunOptions, params: dict[str, Any] | None = None
) -> tuple[nodes.Program, Loader]:
    """The program at `path` and the loader of its imports, checked with `params` (None: not
    yet known). Raises `Refused` with the check's errors, and the `SglError` of a file that
    cannot be read or parsed or of an unknown param."""
    loader = Loader(options.permissions)
    program = loader.load(path)
    if params is not None:
        check_param_names(program, params)
    errors = _errors_only(loader.check(program, params))
    if errors:
        raise Refused(errors)
    return program, loader


async def open_backend(
    program: nodes.Program, loader: Loader, path: Path, options: RunOptions, config: RunConfig
) -> Backend:
    """The backend a run of `program` uses (`options.backend_uri`, else the program's own,
    which must stay within the run's permissions), refused (`Refused`) when it cannot enforce
    the program's constraints and the options do not allow that."""
    declared = None if options.backend_uri else program_backend(program)
    if declared is not None:
        check_program_backend(declared, path.resolve().parent, options.permissions)
    backend = make_backend(
        backend_uri_of(program, options.backend_uri), config, user_chosen=declared is None
    )
    try:
        refuse_unenforced(loader, program, backend, checked=not options.allow_unenforced)
    except BaseException:
        await backend.close()
        raise
    return backend


def refuse_unenforced(
    loader: Loader, program: nodes.Program, backend: Backend, *, checked: bool = True
) -> None:
    """Raise `Refused` with an error per statement `backend` cannot run at all (`image`, `gen
    … tools=`), else, when `checked`, per constraint of the program it cannot enforce."""
    if refused := program_capability_errors(loader, program, backend):
        raise Refused(refused)
    if not checked:
        return
    if refused := unenforced_errors(program_sites(loader, program, backend.capabilities), backend):
        raise Refused(refused)


def check_param_names(program: nodes.Program, params: dict[str, Any]) -> None:
    """Raise `SglNameError` for a param `program` does not declare."""
    unknown = sorted(set(params) - set(declared_params(program)))
    if unknown:
        declared = ", ".join(declared_params(program)) or "none"
        raise SglNameError(f"unknown param `{unknown[0]}` (the program declares: {declared})")


# ---------------------------------------------------------------- one run


async def run_file(path: Path, params: dict[str, Any], options: RunOptions) -> int:
    """Run one program; prints errors, returns the exit code."""
    try:
        run = await prepare_run(path, options, params)
    except Refused as refused:
        _report(refused.errors)
        return 1
    streamer = _Streamer(options.stream)
    interpreter = run.interpreter(params, streamer.chunk)
    started = time.perf_counter()
    token = builtins.output.set(streamer.stdout)
    try:
        with run.permitted():
            await interpreter.run_program(run.program)
    finally:
        builtins.output.reset(token)
        streamer.finish(interpreter.states[0] if interpreter.states else None)
        if run.tracer is not None:
            report = trace_report(interpreter, run.tracer, time.perf_counter() - started)
            if options.trace:
                print_report(report, Console(stderr=True))
            if options.trace_json:
                write_json(report, options.trace_json)
            if options.trace_html:
                write_html(report, options.trace_html, path.name)
        await run.backend.close()
    return 0


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
    path: Path,
    batch: Path,
    out: Path,
    params: dict[str, Any],
    parallel: int,
    options: RunOptions,
    *,
    resume: bool = False,
    rows_runner: RowsRunner | None = None,
) -> int:
    """Run a program once per JSONL row of `batch`; each finished row (a failing or malformed
    one with its error) is appended to `out` as it ends (`batch.Output`); with `resume`, the
    rows `out` already has are skipped. `rows_runner` runs the rows (default `run_here`; the
    Ray one of `ray_batch` on a cluster). SIGINT/SIGTERM stop it with `out` valid. Returns the
    exit code: 1 if a row failed, 128 + the signal's number when stopped."""
    rows = read_rows(batch)
    done = recorded_rows(out, rows) if resume else None
    try:
        run = await prepare_run(path, options)
    except Refused as refused:
        _report(refused.errors)
        return 1
    output = Output(out, done)

    def stopped(signum: signal.Signals) -> str:
        return (
            f"stopped by {signum.name}: {len(output.done)} of {len(rows)} rows done, in {out}; "
            f"to run the other {len(rows) - len(output.done)}, run the same command with --resume"
        )

    todo = [row for row in rows if row.index not in output.done]
    started = time.perf_counter()
    try:
        for row in todo:
            if row.params is None:
                output.write(_line(row, {"output": None, "printed": "", "error": row.error}))
        runnable = [row for row in todo if row.params is not None]
        stopped_by = await _run_stoppable(
            run, runnable, params, parallel, output, stopped, rows_runner or run_here
        )
        if run.tracer is not None:
            run_totals = {"totals": totals(run.tracer, time.perf_counter() - started)}
            if options.trace:
                Console(stderr=True).print_json(data=run_totals)
            if options.trace_json:
                write_json(run_totals, options.trace_json)
            if options.trace_html:
                write_html(run_totals, options.trace_html, f"{path.name} --batch {batch.name}")
    finally:
        output.close()
        await run.backend.close()
    if stopped_by is not None:
        print(stopped(stopped_by), file=sys.stderr)
        return 128 + stopped_by.value
    output.sort()
    num_failed = sum(line.get("error") is not None for line in output.done.values())
    earlier = f" ({len(rows) - len(todo)} from an earlier run)" if len(todo) < len(rows) else ""
    print(
        f"{len(rows) - num_failed} of {len(rows)} rows ok{earlier}; results in {out}",
        file=sys.stderr,
    )
    return 1 if num_failed else 0


async def _run_stoppable(
    run: PreparedRun,
    rows: list[Row],
    params: dict[str, Any],
    parallel: int,
    output: Output,
    stopped: Callable[[signal.Signals], str],
    rows_runner: RowsRunner,
) -> signal.Signals | None:
    """Run `rows`, writing each to `output` as it ends, until done or stopped by a signal
    (`batch.Stopper`, with `stopped` its message; the signal is returned)."""
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("running", total=len(rows))

        def finished(position: int, result: dict[str, Any]) -> None:
            output.write(_line(rows[position], result))
            progress.advance(task)

        merged = [{**params, **(row.params or {})} for row in rows]
        rows_task = asyncio.ensure_future(rows_runner(run, merged, parallel, finished))
        with Stopper(rows_task, output, stopped) as stopper:
            try:
                await rows_task
            except asyncio.CancelledError:
                if stopper.signal is None:
                    raise
    return stopper.signal if rows_task.cancelled() else None


# How a batch's rows run: (the prepared run, each row's params, rows at once, a callback
# given each row's position and result as it ends) -> awaited until every row ended.
RowsRunner = Callable[
    [PreparedRun, list[dict[str, Any]], int, Callable[[int, dict[str, Any]], None]],
    Awaitable[object],
]


async def run_here(
    run: PreparedRun,
    rows: list[dict[str, Any]],
    parallel: int,
    on_result: Callable[[int, dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """The rows on this process's backend (`run_rows`)."""
    return await run_rows(
        run.program,
        run.loader,
        run.backend,
        rows,
        run.config,
        options=run.options,
        parallel=parallel,
        on_result=on_result,
    )


def _line(row: Row, result: dict[str, Any]) -> dict[str, Any]:
    return {"index": row.index, "input": row.params, **result}


class RowResult(NamedTuple):
    """One run of a program among many: its main state (None when it failed), its module's
    data variables with the state's generated ones, what it printed, its backend calls, and
    its error (an `SglError`, or any other exception as an internal error)."""

    state: State | None
    variables: dict[str, Any]
    printed: str
    calls: list[CallRecord]
    error: Exception | None

    def as_json(self) -> dict[str, Any]:
        """`{"output", "printed", "error"}` as `--batch` writes a row."""
        output = None if self.state is None else _jsonable(self.state.variables)
        return {"output": output, "printed": self.printed, "error": _error_text(self.error)}


async def run_rows(
    program: nodes.Program,
    loader: Loader,
    backend: Backend,
    rows: Sequence[dict[str, Any]],
    config: RunConfig,
    *,
    options: RunOptions | None = None,
    parallel: int = 8,
    prefix_hint: bool = True,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """`row_results` as `--batch` writes them: each `{"output", "printed", "error"}` (any
    failure of a row is its error), also given to `on_result` with the row's position."""
    on_row = None if on_result is None else lambda pos, row: on_result(pos, row.as_json())
    results = await row_results(
        PreparedRun(program, loader, config, backend, options or RunOptions()),
        rows,
        parallel=parallel,
        prefix_hint=prefix_hint,
        on_result=on_row,
    )
    return [result.as_json() for result in results]


async def row_results(
    run: PreparedRun,
    rows: Sequence[dict[str, Any]],
    *,
    parallel: int = 8,
    prefix_hint: bool = True,
    on_result: Callable[[int, RowResult], None] | None = None,
) -> list[RowResult]:
    """Run the program once per row of params, at most `parallel` at once, with the
    permissions and retries of its options; each result is also given to `on_result` with the
    row's position as it ends. With `prefix_hint`, the program's constant leading prompt
    (`prefix.program_prefix`) is sent to the backend once before the rows. Cancelled, or when
    `on_result` raises, no row goes on."""
    prefix = program_prefix(run.program)
    if prefix_hint and len(rows) > 1 and not prefix.is_empty:
        with backend_errors():
            await run.backend.cache_prefix(prefix.prompt)
    limit = asyncio.Semaphore(parallel)

    async def one(position: int, row: dict[str, Any]) -> RowResult:
        async with limit:
            with run.permitted():
                result = await run_row(run, row)
        if on_result is not None:
            on_result(position, result)
        return result

    tasks = [asyncio.ensure_future(one(position, row)) for position, row in enumerate(rows)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_row(run: PreparedRun, row: dict[str, Any]) -> RowResult:
    """Run the program once with the params of `row` that it declares (checked first),
    capturing what it prints; any failure is the result's error."""
    printed = io.StringIO()
    token = builtins.output.set(printed)
    params = {name: row[name] for name in declared_params(run.program) if name in row}
    interpreter = run.interpreter(params)
    try:
        errors = _errors_only(run.loader.check(run.program, params))
        if errors:
            raise errors[0]
        state = await interpreter.run_program(run.program)
        variables = {**_data(interpreter.scope.vars), **state.variables}
        return RowResult(state, variables, printed.getvalue(), interpreter.calls, None)
    except Exception as error:  # an SglError, or a bug or a Python limit met by this row
        return RowResult(None, {}, printed.getvalue(), interpreter.calls, error)
    finally:
        builtins.output.reset(token)


def _data(variables: dict[str, Any]) -> dict[str, Any]:
    """The variables that hold data: not functions, schemas or imported modules."""
    return {
        name: value
        for name, value in variables.items()
        if not (callable(value) or isinstance(value, (Function, Schema, ModuleType)))
    }


def _error_text(error: Exception | None) -> str | None:
    if error is None or isinstance(error, SglError):
        return None if error is None else error.render()
    return f"internal error: {type(error).__name__}: {error}"


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for name, value in values.items():
        try:
            json.dumps(value)
            result[name] = value
        except (TypeError, ValueError):
            result[name] = to_repr(value)
    return result
