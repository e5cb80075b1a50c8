"""The files and signals of `sgl run --batch IN --out OUT`: IN's rows, OUT written row by row.

IN is split on `\\n` only (a JSON string may hold U+2028 or U+0085); a blank line is no row.
A row that is not a JSON object is a `Row` with its located error, so the others still run.
OUT is JSONL, one line per finished row, appended and flushed as each row ends (so it holds
whole lines in completion order while the batch runs) and rewritten in input order when the
batch completes. `recorded_rows` reads the rows an earlier, interrupted run finished.
SIGINT/SIGTERM stop a batch (`Stopper`): no new row starts, the running ones are cancelled; a
second signal stops it at once (for a row busy with no backend call); OUT keeps every finished row.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sgl_lang.errors import SglValueError
from sgl_lang.source import Source

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
JSON_BLANKS = " \t\r"  # JSON's whitespace, but for `\n`, which ends a line


@dataclass(frozen=True)
class Row:
    """Row `index` (0-based, blank lines not counted) of IN, at 1-based `line`: its params, or
    the rendered `error` of a malformed line (then `params` is None)."""

    index: int
    line: int
    params: dict[str, Any] | None
    error: str | None = None


def read_rows(path: Path) -> list[Row]:
    """The rows of the JSONL file at `path`; a malformed row carries its `IN:line:col` error."""
    data = path.read_bytes()
    source = Source(str(path), data.decode("utf-8", errors="replace"))
    rows: list[Row] = []
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip(JSON_BLANKS.encode()):
            continue
        params, error = _parse_row(raw, line_no, source)
        rows.append(Row(len(rows), line_no, params, error))
    return rows


def _parse_row(
    raw: bytes, line_no: int, source: Source
) -> tuple[dict[str, Any] | None, str | None]:
    line_start = source.line_starts[line_no - 1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8", errors="replace"))
        return None, _error(source, line_start + column, "this line is not UTF-8 text")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, _error(source, line_start + exc.pos, f"not a JSON line: {exc.msg}")
    except (ValueError, RecursionError) as exc:  # a huge int literal, nesting too deep
        return None, _error(source, line_start, f"not a usable JSON line: {exc}")
    if not isinstance(row, dict):
        return None, _error(source, line_start, "each line must be a JSON object of params")
    return row, None


def _error(source: Source, offset: int, message: str) -> str:
    return SglValueError(message, source.span(offset, offset + 1)).render()


def recorded_rows(path: Path, rows: list[Row]) -> dict[int, dict[str, Any]]:
    """The lines, by row index, that an earlier run of the batch `rows` wrote to OUT at `path`
    (none if there is no such file); a last line cut short by a crash is not counted (its row
    runs again). Raises `SglValueError` when OUT is not the output of a batch of these rows."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    done: dict[int, dict[str, Any]] = {}
    for line_no, raw in enumerate(whole.split(b"\n")[:-1], start=1):
        line = _recorded_line(raw)
        index = line.get("index") if line is not None else None
        if line is None or not isinstance(index, int) or not 0 <= index < len(rows):
            raise SglValueError(f"{path}:{line_no}: not a line of this batch's output")
        if json.dumps(line.get("input")) != json.dumps(rows[index].params):
            raise SglValueError(
                f"{path}:{line_no}: row {index} was run with another input than "
                f"line {rows[index].line} of the batch file has now",
                hint="resume with the batch file the output was made from",
            )
        done[index] = line
    return done


class Output:
    """OUT, open for appending finished rows (`write`): emptied for a new batch (`done` None),
    else holding the lines `done` (`recorded_rows`) and cut after its last whole line."""

    def __init__(self, path: Path, done: dict[int, dict[str, Any]] | None) -> None:
        self.path = path
        self.done = dict(done or {})
        if done is None or not path.exists():
            self._file = path.open("wb")
            return
        with path.open("r+b") as file:
            data = file.read()
            file.truncate(data.rfind(b"\n") + 1)
        self._file = path.open("ab")

    def write(self, line: dict[str, Any]) -> None:
        """Append one finished row's line (it has an `index`) and flush it to the file."""
        data = json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n"
        self.done[line["index"]] = line  # first: a signal's `flush` from here on still
        self._file.write(data)  # puts the counted line on disk
        self._file.flush()

    def flush(self) -> None:
        """Put every line `write` was given on disk (safe from a signal handler)."""
        with suppress(OSError, RuntimeError, ValueError):  # reentrant in `write`, or closed
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def sort(self) -> None:
        """Rewrite OUT in input order (through a temporary file, so it is never half written)."""
        self.close()
        temporary = self.path.with_name(self.path.name + ".sorting")
        with temporary.open("wb") as file:
            for index in sorted(self.done):
                file.write(json.dumps(self.done[index], ensure_ascii=False).encode("utf-8"))
                file.write(b"\n")
        os.replace(temporary, self.path)


class Stopper:
    """Within: SIGINT and SIGTERM stop the batch run by `rows_task`, writing to `output`. The
    first one cancels the task (no new row starts, the running ones are cancelled at their
    next await; `signal` is then set); a second one, for a row that never awaits, flushes
    `output` and exits at once with `stopped(signal)` on stderr."""

    def __init__(
        self,
        rows_task: asyncio.Future[Any],
        output: Output,
        stopped: Callable[[signal.Signals], str],
    ) -> None:
        self.rows_task = rows_task
        self.output = output
        self.stopped = stopped
        self.signal: signal.Signals | None = None
        self._loop = asyncio.get_running_loop()
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Stopper:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # On the main thread between two bytecodes: write with os.write, never with sys.stderr
        if self.signal is not None:
            self.output.flush()
            os.write(2, f"\n{self.stopped(signal.Signals(signum))}\n".encode())
            os._exit(128 + signum)
        self.signal = signal.Signals(signum)
        notice = (
            "stopping: no new row starts, the running ones are cancelled (signal again: at once)"
        )
        os.write(2, f"\n{notice}\n".encode())
        self._loop.call_soon_threadsafe(self.rows_task.cancel)


def _recorded_line(raw: bytes) -> dict[str, Any] | None:
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return line if isinstance(line, dict) else None
