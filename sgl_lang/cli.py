"""The command line: `sgl run`, `check`, `repl`, `serve`, `lsp`. Thin: dispatch, error printing,
exit codes."""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from sgl_lang.calls import DEFAULT_NUM_RETRIES
from sgl_lang.errors import SglError, SglWarning
from sgl_lang.runtime.config import DENSE_ROWS, GROUP_SIZES, KERNELS, QUANT_MODES
from sgl_lang.runtime.config import POLICIES as RUN_POLICIES

ROUTER_POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")  # sglang-router's

if TYPE_CHECKING:
    from sgl_lang.config import RunOptions, Stream
    from sgl_lang.stdlib.permissions import Permissions

T = TypeVar("T")

EXIT_OK, EXIT_PROGRAM_ERROR, EXIT_USAGE = 0, 1, 2
RAY_HERE = "local"  # `--ray` without an address: a Ray instance started on this machine
MAX_BODY_MB = 8.0  # sgl serve's request-size limit (server/guard.py's MAX_BODY_BYTES)


def _fail(error: BaseException, debug: bool) -> int:
    """Print an error for a user (with a traceback only under --debug); returns the exit code."""
    if debug:
        traceback.print_exception(error)
    if isinstance(error, SglError):
        click.echo(error.render(), err=True)
    elif not debug:
        click.echo(f"internal error: {type(error).__name__}: {error}", err=True)
        click.echo("(run again with --debug for the Python traceback)", err=True)
    return EXIT_PROGRAM_ERROR


def _guard(debug: bool, action: Callable[[], T]) -> T:
    """Run `action`; on any failure print it as a user-facing error and exit 1."""
    try:
        return action()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:
        sys.exit(_fail(error, debug))


def parse_assignment(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` from `--set`: the value parsed as JSON when possible, else kept as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise click.BadParameter(f"expected NAME=VALUE, got `{text}`", param_hint="--set")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


# Options of `sgl run` that `sgl repl` takes too; `run_options` reads them.
F = TypeVar("F", bound=Callable[..., Any])


def _options(*options: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying `options` in order (the first is listed first in --help)."""

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


set_option = click.option(
    "--set", "assignments", multiple=True, metavar="NAME=VALUE", help="Set a param."
)
# The engine's knobs, shared by `sgl run`/`repl` (through `runtime_options`) and `sgl serve`;
# each one's name is its `sgl.toml` key (config.ENGINE_KEYS), so a new knob is one line here.
engine_options = _options(
    click.option("--kv-cache-gb", type=click.FloatRange(min=0, min_open=True), help="KV budget."),
    click.option("--policy", type=click.Choice(RUN_POLICIES), help="Scheduling policy."),
    click.option("--cache/--no-cache", default=None, help="The radix prefix cache (default: on)."),
    click.option(
        "--max-running",
        "max_running_requests",
        type=click.IntRange(min=1),
        help="Max requests decoded together.",
    ),
    click.option("--threads", type=click.IntRange(min=1), help="Torch threads."),
    click.option(
        "--quantize", type=click.Choice(QUANT_MODES), help="Linear weights (default: none)."
    ),
    click.option(
        "--quantize-group-size",
        type=click.Choice([str(size) for size in GROUP_SIZES]),
        callback=lambda _ctx, _param, value: None if value is None else int(value),
        help="int4 columns sharing one scale (default: 32).",
    ),
    click.option(
        "--quantize-dense-rows",
        type=click.IntRange(min=0),
        help=f"Quantized steps of this many rows or more use a dense fp32 copy of the weights; "
        f"0 = never (default: {DENSE_ROWS}).",
    ),
    click.option(
        "--kernels",
        type=click.Choice(KERNELS),
        help="Forward kernels (default: auto = vllm if installed).",
    ),
)


def config_option(default_place: str) -> Callable[[F], F]:
    """`--config FILE`, the `sgl.toml` read instead of the one in `default_place`."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=f"Runtime options file (default: sgl.toml {default_place}, else the user's).",
    )


runtime_options = _options(
    config_option("next to the program"),
    click.option(
        "--model",
        type=click.Path(exists=True, path_type=Path),
        help="Model of the `local` backend (a HF folder or a .gguf).",
    ),
    engine_options,
    click.option("--max-tokens", type=click.IntRange(min=1), help="Default max_tokens of `gen`."),
)
SCOPED_FLAGS = {"read": "--allow-read", "write": "--allow-write", "net": "--allow-net"}
SCOPE_SUFFIX = "-scope"
permission_options = _options(
    click.option(
        "--allow-read",
        is_flag=True,
        help="Let the program read files (`image` paths, `import` outside its folder, the "
        "files module). --allow-read=DIR[,DIR] (repeatable): only below those folders.",
    ),
    click.option(
        "--allow-write",
        is_flag=True,
        help="Let the program write files. --allow-write=DIR[,DIR]: only below those folders.",
    ),
    click.option(
        "--allow-net",
        is_flag=True,
        help="Let the program use the network (web.get, image URLs, a `backend` it names). "
        "--allow-net=HOST[:PORT][,...]: only those hosts.",
    ),
    click.option(
        "--allow-python",
        is_flag=True,
        help="Let the program call Python functions. This runs arbitrary code with all your "
        "rights: no other permission holds then. Only for programs you trust.",
    ),
    *(
        click.option(f"{flag}{SCOPE_SUFFIX}", f"{kind}_scope", multiple=True, hidden=True)
        for kind, flag in SCOPED_FLAGS.items()
    ),
)


class ScopedFlagsCommand(click.Command):
    """A command taking Deno's `--allow-read=DIR` spelling: a value attached with `=` to a
    permission flag goes to its hidden `--allow-read-scope` option, so that the bare flag
    stays a flag (`--allow-read prog.sgl` never reads `prog.sgl` as a folder)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _split_scopes(args))


def _split_scopes(args: list[str]) -> list[str]:
    """`--allow-read=DIR` as `--allow-read-scope DIR`; arguments after `--` are left alone."""
    split: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return split + args[index:]
        flag, eq, value = arg.partition("=")
        split.extend(
            [flag + SCOPE_SUFFIX, value] if eq and flag in SCOPED_FLAGS.values() else [arg]
        )
    return split


def permissions_of(flags: dict[str, bool], scopes: dict[str, tuple[str, ...]]) -> Permissions:
    """The `Permissions` of the `--allow-*` flags: a bare flag grants everything; scoped
    ones (`--allow-read=a,b`, repeatable) only the listed folders (resolved from the working
    folder) or hosts."""
    from sgl_lang.stdlib.permissions import Permissions, resolved

    granted: dict[str, Any] = {"python": flags["python"]}
    for kind, flag in SCOPED_FLAGS.items():
        places = [place.strip() for item in scopes[kind] for place in item.split(",")]
        if any(not place for place in places):
            raise click.BadParameter(f"an empty place in {flag}=...", param_hint=flag)
        if flags[kind] or not places:
            granted[kind] = flags[kind]
        else:
            granted[kind] = tuple(places) if kind == "net" else tuple(map(resolved, places))
    return Permissions(**granted)


def run_options(
    *,
    backend_uri: str | None,
    config_path: Path | None,
    model: Path | None,
    max_tokens: int | None,
    allow_read: bool,
    allow_write: bool,
    allow_net: bool,
    allow_python: bool,
    read_scope: tuple[str, ...] = (),
    write_scope: tuple[str, ...] = (),
    net_scope: tuple[str, ...] = (),
    stream: bool | None = None,
    trace: bool = False,
    trace_json: Path | None = None,
    trace_html: Path | None = None,
    replay: Path | None = None,
    allow_unenforced: bool = False,
    num_retries: int = DEFAULT_NUM_RETRIES,
    max_steps: int | None = None,
    timeout: float | None = None,
    **engine_settings: Any,
) -> RunOptions:
    """The `RunOptions` of the flags of `sgl run`, or of the part of them `sgl repl` takes.
    The runtime flags (`engine_settings`: those of `engine_options`) become `RunConfig`
    overrides (None: not given)."""
    from sgl_lang.config import RunOptions

    return RunOptions(
        backend_uri=backend_uri,
        permissions=permissions_of(
            {"read": allow_read, "write": allow_write, "net": allow_net, "python": allow_python},
            {"read": read_scope, "write": write_scope, "net": net_scope},
        ),
        stream=_stream_mode(stream),
        trace=trace,
        trace_json=trace_json,
        trace_html=trace_html,
        config_path=config_path,
        settings={
            "model": model.resolve() if model else None,
            "max_tokens": max_tokens,
            "max_steps": max_steps,
            "timeout_s": timeout,
            **engine_settings,
        },
        replay=replay,
        allow_unenforced=allow_unenforced,
        num_retries=num_retries,
    )


def _stream_mode(stream: bool | None) -> Stream:
    """`sgl run`'s streaming: rich on a terminal; plain text when stderr is piped and
    --stream is given; nothing when piped by default; at the end with --no-stream."""
    from sgl_lang.config import Stream

    if stream is False:
        return Stream.END
    if sys.stderr.isatty():
        return Stream.LIVE
    return Stream.PLAIN if stream else Stream.OFF


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sgl-lang")
def main() -> None:
    """sgl — run LLM programs written in the .sgl language."""


@main.command(cls=ScopedFlagsCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--backend", "backend_uri", help="Backend URI (default: the program's, else `local`)."
)
@set_option
@click.option(
    "--batch",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run once per line of a JSONL file of params.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Batch output JSONL.")
@click.option(
    "--resume",
    is_flag=True,
    help="With --batch: skip the rows --out already has (from a stopped run), run the others.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Batch rows run at once (with --ray: on each actor).",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value=RAY_HERE,
    metavar="[ADDRESS]",
    help="With --batch: run the rows on Ray actors, each with its own engine, rows sharing a "
    "prompt prefix on one actor; on the cluster at ADDRESS (`auto`: the running one), else a "
    "local one (needs ray: pip install 'sgl-lang[ray]').",
)
@click.option(
    "--ray-actors",
    type=click.IntRange(min=1),
    help="With --ray: the number of actors (default: one per --threads CPUs of the cluster).",
)
@click.option(
    "--stream/--no-stream",
    default=None,
    help="Show generated text as it arrives (default: when stderr is a terminal); "
    "--no-stream shows it when the program ends.",
)
@click.option("--trace", is_flag=True, help="Print every state and backend call, and totals.")
@click.option(
    "--trace-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the trace as JSON to this file.",
)
@click.option(
    "--trace-html",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the trace as one self-contained HTML page to this file.",
)
@click.option(
    "--replay",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Answer repeated backend requests from this JSONL file, recording new answers in it.",
)
@click.option(
    "--allow-unenforced",
    is_flag=True,
    help="Run constraints the backend cannot enforce: generate without them, check, retry.",
)
@click.option(
    "--retries",
    "num_retries",
    type=click.IntRange(min=0),
    default=DEFAULT_NUM_RETRIES,
    show_default=True,
    help="With --allow-unenforced: retries of a gen whose output fails its constraint.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    help="Stop the program after this many statements and expressions (default: no limit).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop the program after this many seconds (default: no limit).",
)
@runtime_options
@permission_options
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def run(
    file: Path,
    assignments: tuple[str, ...],
    batch: Path | None,
    out: Path | None,
    parallel: int,
    resume: bool,
    ray_address: str | None,
    ray_actors: int | None,
    debug: bool,
    **flags: Any,
) -> None:
    """Run a program."""
    from sgl_lang import runner

    params = dict(parse_assignment(item) for item in assignments)
    if (batch is None) != (out is None):
        raise click.UsageError("--batch and --out go together")
    if resume and batch is None:
        raise click.UsageError("--resume goes with --batch")
    if (ray_address is not None or ray_actors is not None) and batch is None:
        raise click.UsageError("--ray and --ray-actors go with --batch")
    options = run_options(**flags)
    rows_runner = None
    if ray_address is not None:
        from sgl_lang.ray_batch import RayRows

        address = None if ray_address == RAY_HERE else ray_address
        rows_runner = RayRows(file, options, address, ray_actors, flags["threads"] or 1)
    if batch is not None and out is not None:
        code = _guard(
            debug,
            lambda: asyncio.run(
                runner.run_batch_file(
                    file,
                    batch,
                    out,
                    params,
                    parallel,
                    options,
                    resume=resume,
                    rows_runner=rows_runner,
                )
            ),
        )
    else:
        code = _guard(debug, lambda: asyncio.run(runner.run_file(file, params, options)))
    sys.exit(code)


@main.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--backend",
    "backend_uri",
    help="Also report, per gen/select with a constraint, whether this backend enforces it.",
)
@click.option("--strict", is_flag=True, help="Warnings fail the check too.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def check(files: tuple[Path, ...], backend_uri: str | None, strict: bool, debug: bool) -> None:
    """Parse and check programs without running them. With --backend, print on stdout one
    line per gen/select with a constraint: whether that backend enforces it."""
    from sgl_lang import runner

    report = _guard(debug, lambda: runner.check_report(files, backend_uri))
    for line in report.site_lines:
        click.echo(line)
    problems = report.problems
    for problem in problems:
        click.echo(problem.render(), err=True)
    num_errors = sum(not isinstance(p, SglWarning) for p in problems)
    num_warnings = len(problems) - num_errors
    if problems:
        click.echo(f"{num_errors} error(s), {num_warnings} warning(s)", err=True)
    sys.exit(EXIT_PROGRAM_ERROR if num_errors or (strict and problems) else EXIT_OK)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--check", is_flag=True, help="Change no file; exit 1 if one would change.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def fmt(paths: tuple[Path, ...], check: bool, debug: bool) -> None:
    """Rewrite programs in the canonical layout (a folder: every .sgl file in it)."""
    files = [f for p in paths for f in (sorted(p.rglob("*.sgl")) if p.is_dir() else [p])]
    results = [_guard(debug, partial(_format_file, file, check)) for file in files]
    changed, failed = results.count("changed"), results.count("failed")
    verb = "would be reformatted" if check else "reformatted"
    click.echo(f"{changed} file(s) {verb}, {len(files) - changed - failed} unchanged", err=True)
    sys.exit(EXIT_PROGRAM_ERROR if failed or (check and changed) else EXIT_OK)


def _format_file(file: Path, check: bool) -> str:
    """Format one file (or, with `check`, say it would change): "changed", "same" or
    "failed" (its error printed)."""
    from sgl_lang.fmt import format_source

    try:
        text = file.read_text("utf-8")
        formatted = format_source(text, str(file))
    except SglError as error:
        click.echo(error.render(), err=True)
        return "failed"
    except (OSError, UnicodeDecodeError) as error:
        click.echo(f"{file}: error: cannot read: {error}", err=True)
        return "failed"
    if formatted == text:
        return "same"
    if check:
        click.echo(f"would reformat {file}", err=True)
    else:
        file.write_text(formatted, "utf-8")
        click.echo(f"reformatted {file}", err=True)
    return "changed"


@main.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(exists=True, path_type=Path),
    help="A HF model folder or a .gguf (default: sgl.toml's `model`, else the embedded SmolLM2).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=30000, show_default=True)
@click.option("--api-key", envvar="SGL_API_KEY", help="Require this key (env: SGL_API_KEY).")
@click.option("--model-name", help="The model's name in /v1/models (default: from the path).")
@config_option("in the working folder")
@engine_options
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer this Host name (bound to loopback, only localhost/127.0.0.1/[::1] are).",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=MAX_BODY_MB,
    show_default=True,
    help="Largest request body; a larger one gets 413.",
)
@click.option(
    "--replicas",
    "num_replicas",
    type=click.IntRange(min=1),
    help="Start this many workers on the ports after --port, behind SGLang's router on --port "
    "(needs sglang-router: pip install 'sgl-lang[router]').",
)
@click.option(
    "--router-policy",
    type=click.Choice(ROUTER_POLICIES),
    default="cache_aware",
    show_default=True,
    help="With --replicas: how the router picks a worker.",
)
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def serve(
    model_path: Path | None,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    config_path: Path | None,
    allowed_hosts: tuple[str, ...],
    max_body_mb: float,
    num_replicas: int | None,
    router_policy: str,
    debug: bool,
    **engine_settings: Any,
) -> None:
    """Serve the runtime over HTTP (native and OpenAI-compatible endpoints). The engine
    options come from the flags over sgl.toml (the working folder's, else the user's)."""
    from sgl_lang.config import CONFIG_NAME, resolve_config

    settings = {"model": model_path.resolve() if model_path else None, **engine_settings}
    config = _guard(debug, lambda: resolve_config(Path.cwd() / CONFIG_NAME, config_path, settings))
    max_body_bytes = int(max_body_mb * 1024 * 1024)
    if num_replicas is not None:
        if api_key:
            raise click.UsageError("--api-key does not go with --replicas (the router takes none)")
        from sgl_lang import replicas

        flags = [f"--max-body-mb={max_body_mb}"] + (
            [f"--model-name={model_name}"] if model_name else []
        )
        plan = replicas.ReplicaPlan(num_replicas, host, port, router_policy, tuple(flags))
        sys.exit(_guard(debug, lambda: replicas.serve_replicas(plan, config)))
    from sgl_lang.server.app import serve as serve_http

    _guard(
        debug,
        lambda: serve_http(
            config.model,
            host,
            port,
            api_key=api_key,
            model_name=model_name,
            engine_options=config.engine_options,
            allowed_hosts=allowed_hosts,
            max_body_bytes=max_body_bytes,
        ),
    )


@main.command(cls=ScopedFlagsCommand)
@click.option("--backend", "backend_uri", default="local", show_default=True, help="Backend URI.")
@set_option
@runtime_options
@permission_options
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def repl(backend_uri: str, assignments: tuple[str, ...], debug: bool, **flags: Any) -> None:
    """An interactive session on one persistent state (:help inside). `--set` gives the
    values of `param` statements; sgl.toml is looked up in the working folder."""
    from sgl_lang import repl as sgl_repl

    params = dict(parse_assignment(item) for item in assignments)
    options = run_options(backend_uri=backend_uri, **flags)

    def start() -> None:
        config = sgl_repl.session_config(options.config_path, options.settings)
        sgl_repl.run(backend_uri, params=params, granted=options.permissions, config=config)

    _guard(debug, start)


@main.command()
def lsp() -> None:
    """The language server for editors (LSP over stdin/stdout)."""
    from sgl_lang.lsp.server import main as serve_lsp

    serve_lsp()


if __name__ == "__main__":
    main()
