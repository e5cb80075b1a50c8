"""The command line: `sgl run` and `sgl check`. Thin: dispatch, error printing, exit codes."""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sgl_lang.errors import SglError, SglWarning

T = TypeVar("T")

EXIT_OK, EXIT_PROGRAM_ERROR, EXIT_USAGE = 0, 1, 2


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sgl-lang")
def main() -> None:
    """sgl — run LLM programs written in the .sgl language."""


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--backend", "backend_uri", help="Backend URI (default: the program's, else `local`)."
)
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE", help="Set a param.")
@click.option(
    "--batch",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run once per line of a JSONL file of params.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Batch output JSONL.")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Batch rows run at once.",
)
@click.option("--stream/--no-stream", default=None, help="Show generated text as it arrives.")
@click.option("--trace", is_flag=True, help="Print each state's prompt and every backend call.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Default max_tokens of `gen`.")
@click.option("--allow-read", is_flag=True, help="Let the program read files.")
@click.option("--allow-write", is_flag=True, help="Let the program write files.")
@click.option("--allow-net", is_flag=True, help="Let the program use the network.")
@click.option("--allow-python", is_flag=True, help="Let the program call Python functions.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def run(
    file: Path,
    backend_uri: str | None,
    assignments: tuple[str, ...],
    batch: Path | None,
    out: Path | None,
    parallel: int,
    stream: bool | None,
    trace: bool,
    max_tokens: int | None,
    allow_read: bool,
    allow_write: bool,
    allow_net: bool,
    allow_python: bool,
    debug: bool,
) -> None:
    """Run a program."""
    from sgl_lang import runner
    from sgl_lang.stdlib.permissions import Permissions

    params = dict(parse_assignment(item) for item in assignments)
    if (batch is None) != (out is None):
        raise click.UsageError("--batch and --out go together")
    options = runner.RunOptions(
        backend_uri=backend_uri,
        permissions=Permissions(
            read=allow_read, write=allow_write, net=allow_net, python=allow_python
        ),
        stream=sys.stderr.isatty() if stream is None else stream,
        trace=trace,
        max_tokens=max_tokens,
    )
    if batch is not None and out is not None:
        code = _guard(
            debug,
            lambda: asyncio.run(runner.run_batch_file(file, batch, out, params, parallel, options)),
        )
    else:
        code = _guard(debug, lambda: asyncio.run(runner.run_file(file, params, options)))
    sys.exit(code)


@main.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--backend", "backend_uri", help="Also check what this backend can enforce.")
@click.option("--strict", is_flag=True, help="Warnings fail the check too.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def check(files: tuple[Path, ...], backend_uri: str | None, strict: bool, debug: bool) -> None:
    """Parse and check programs without running them."""
    from sgl_lang import runner

    problems = _guard(debug, lambda: runner.check_files(files, backend_uri))
    for problem in problems:
        click.echo(problem.render(), err=True)
    num_errors = sum(not isinstance(p, SglWarning) for p in problems)
    num_warnings = len(problems) - num_errors
    if problems:
        click.echo(f"{num_errors} error(s), {num_warnings} warning(s)", err=True)
    sys.exit(EXIT_PROGRAM_ERROR if num_errors or (strict and problems) else EXIT_OK)


if __name__ == "__main__":
    main()
