"""The files of `sgl run --batch IN --out OUT`: IN's rows, and OUT written row by row.

IN is split on `\\n` only (a JSON string may hold U+2028 or U+0085); a blank line is no row.
A row that is not a JSON object is a `Row` with its located error, so the others still run.
OUT is JSONL, one line per finished row, appended and flushed as each row ends (so it holds
whole lines in completion order while the batch runs) and rewritten in input order when the
batch completes. `recorded_rows` reads the rows an earlier, interrupted run finished.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgl_lang.errors import SglValueError
from sgl_lang.source import Source

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
        self._file.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        self._file.flush()
        self.done[line["index"]] = line

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


def _recorded_line(raw: bytes) -> dict[str, Any] | None:
    try:
        line = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return line if isinstance(line, dict) else None
