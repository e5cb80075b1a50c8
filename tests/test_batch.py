"""`sgl run --batch IN --out OUT` loses no finished row: kill, resume, bad rows, failing rows."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUM_ROWS = 40
NUM_DONE_BEFORE_KILL = 20

# Rows from NUM_DONE_BEFORE_KILL on keep generating while `hold` is true: a batch run with
# `--set hold=true` finishes exactly the first 20 rows and then waits, in-flight, to be stopped.
# Every row that finishes appends its `i` to the file `log` (which rows ran, in this run).
HELD_PROGRAM = f"""\
import files
param i
param log
param hold = false
"Row {{i}}:"
gen a(max_tokens=4)
while hold and i >= {NUM_DONE_BEFORE_KILL}:
    gen b(max_tokens=1)
files.write(log, "{{i}}\\n", append=true)
"""


def sgl(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sgl_lang.cli", "run", *map(str, args)]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sgl(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_out(out: Path) -> list[dict[str, object]]:
    """Every line of OUT, each a whole JSON object (the file ends with a line break)."""
    data = out.read_text(encoding="utf-8")
    assert data == "" or data.endswith("\n")
    return [json.loads(line) for line in data.split("\n")[:-1]]


def logged(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def wait_for_lines(out: Path, num_lines: int, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 240  # generous: only a hung batch takes this long
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= num_lines:
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"the batch did not write {num_lines} rows: {process.communicate()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_batch_keeps_its_rows_and_resume_runs_only_the_others(
    tmp_path: Path, signum: signal.Signals
) -> None:
    program = tmp_path / "held.sgl"
    program.write_text(HELD_PROGRAM)
    rows = write_rows(tmp_path / "rows.jsonl", [{"i": i} for i in range(NUM_ROWS)])
    out, first_log, resumed_log = tmp_path / "out.jsonl", tmp_path / "1.log", tmp_path / "2.log"
    args = [program, "--backend", "test", "--batch", rows, "--out", out, "--parallel", "4"]
    args += ["--allow-write"]

    process = subprocess.Popen(
        sgl(*args, "--set", "hold=true", "--set", f"log={first_log}"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(out, NUM_DONE_BEFORE_KILL, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signum.value, stderr
    assert f"stopped by {signum.name}: 20 of 40 rows done, in {out}" in stderr
    assert "to run the other 20, run the same command with --resume" in stderr
    assert "Traceback" not in stderr
    done = read_out(out)
    assert sorted(line["index"] for line in done) == list(range(NUM_DONE_BEFORE_KILL))
    assert all(line["error"] is None for line in done)
    assert sorted(logged(first_log)) == list(range(NUM_DONE_BEFORE_KILL))

    resumed = run(*args, "--resume", "--set", f"log={resumed_log}")

    assert resumed.returncode == 0, resumed.stderr
    assert "40 of 40 rows ok (20 from an earlier run)" in resumed.stderr
    assert sorted(logged(resumed_log)) == list(range(NUM_DONE_BEFORE_KILL, NUM_ROWS))
    lines = read_out(out)
    assert [line["index"] for line in lines] == list(range(NUM_ROWS))  # input order at the end
    assert [line["input"] for line in lines] == [{"i": i} for i in range(NUM_ROWS)]
    assert lines[:NUM_DONE_BEFORE_KILL] == sorted(done, key=lambda line: line["index"])


def test_a_second_signal_stops_a_row_that_never_awaits(tmp_path: Path) -> None:
    program = tmp_path / "busy.sgl"
    program.write_text("param i\nwhile i == 3:\n    i = 3\nprint(i)\n")
    rows = write_rows(tmp_path / "rows.jsonl", [{"i": i} for i in range(5)])
    out = tmp_path / "out.jsonl"
    args = [program, "--backend", "test", "--batch", rows, "--out", out, "--parallel", "1"]
    process = subprocess.Popen(sgl(*args), cwd=ROOT, stderr=subprocess.PIPE)
    wait_for_lines(out, 3, process)
    process.send_signal(signal.SIGTERM)
    stderr = read_until(process, b"(signal again: at once)")
    process.send_signal(signal.SIGTERM)
    stderr += process.communicate(timeout=120)[1]

    assert process.returncode == 128 + signal.SIGTERM.value
    assert b"stopped by SIGTERM: 3 of 5 rows done" in stderr, stderr
    assert [line["printed"] for line in read_out(out)] == ["0\n", "1\n", "2\n"]


def read_until(process: subprocess.Popen[bytes], text: bytes) -> bytes:
    """What `process` writes on stderr up to `text` (it must come within a generous time)."""
    assert process.stderr is not None
    received = b""
    deadline = time.monotonic() + 120
    while text not in received:
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        chunk = os.read(process.stderr.fileno(), 4096) if ready else b""
        if not chunk:
            process.kill()
            raise AssertionError(f"no {text!r} on stderr: {received!r}")
        received += chunk
    return received


def test_resume_redoes_a_last_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    program = tmp_path / "held.sgl"
    program.write_text(HELD_PROGRAM)
    rows = write_rows(tmp_path / "rows.jsonl", [{"i": i} for i in range(5)])
    out, log = tmp_path / "out.jsonl", tmp_path / "ran.log"
    args = [program, "--backend", "test", "--batch", rows, "--out", out, "--allow-write"]
    assert run(*args, "--set", f"log={tmp_path / 'all.log'}").returncode == 0
    complete = out.read_text().split("\n")
    out.write_text("\n".join(complete[:2]) + "\n" + complete[2][: len(complete[2]) // 2])

    resumed = run(*args, "--resume", "--set", f"log={log}")

    assert resumed.returncode == 0, resumed.stderr
    assert "5 of 5 rows ok (2 from an earlier run)" in resumed.stderr
    assert sorted(logged(log)) == [2, 3, 4]
    assert out.read_text().split("\n") == complete


def test_resume_refuses_the_output_of_another_batch(tmp_path: Path) -> None:
    program = tmp_path / "echo.sgl"
    program.write_text("param q\nprint(q)\n")
    rows = write_rows(tmp_path / "rows.jsonl", [{"q": "a"}, {"q": "b"}])
    out = tmp_path / "out.jsonl"
    assert run(program, "--backend", "test", "--batch", rows, "--out", out).returncode == 0
    before = out.read_text()
    write_rows(rows, [{"q": "a"}, {"q": "changed"}])

    resumed = run(program, "--backend", "test", "--batch", rows, "--out", out, "--resume")

    assert resumed.returncode == 1
    assert resumed.stderr.startswith(
        f"value error: {out}:2: row 1 was run with another input than line 2 of the batch "
        "file has now\nhint: resume with the batch file the output was made from"
    )
    assert out.read_text() == before


def test_resume_without_an_output_runs_every_row(tmp_path: Path) -> None:
    program = tmp_path / "echo.sgl"
    program.write_text("param q\nprint(q)\n")
    rows = write_rows(tmp_path / "rows.jsonl", [{"q": "a"}, {"q": "b"}])
    out = tmp_path / "out.jsonl"
    result = run(program, "--backend", "test", "--batch", rows, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert [line["printed"] for line in read_out(out)] == ["a\n", "b\n"]


def test_resume_goes_with_batch(tmp_path: Path) -> None:
    program = tmp_path / "echo.sgl"
    program.write_text('print("hi")\n')
    result = run(program, "--backend", "test", "--resume")
    assert result.returncode == 2 and "--resume goes with --batch" in result.stderr


def test_an_internal_error_in_a_row_is_that_rows_error(tmp_path: Path) -> None:
    program = tmp_path / "digits.sgl"
    program.write_text(
        'param n\nx = 1\nfor k in range(n):\n    x = x * 10\ntext = "{x}"\nprint(len(text))\n'
    )
    rows = write_rows(tmp_path / "rows.jsonl", [{"n": 2}, {"n": 5000}, {"n": 3}])
    out = tmp_path / "out.jsonl"

    result = run(program, "--backend", "test", "--batch", rows, "--out", out)

    assert result.returncode == 1
    assert "2 of 3 rows ok" in result.stderr and "Traceback" not in result.stderr
    lines = read_out(out)
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert [line["printed"] for line in (lines[0], lines[2])] == ["3\n", "4\n"]
    assert lines[1]["output"] is None and lines[1]["error"]


def test_rows_are_split_on_newlines_only(tmp_path: Path) -> None:
    program = tmp_path / "echo.sgl"
    program.write_text("param q\nprint(q)\n")
    texts = ["line\u2028separator", "next\u0085line", "para\u2029graph", "form\x0cfeed"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"q": t}, ensure_ascii=False) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"

    result = run(program, "--backend", "test", "--batch", rows, "--out", out)

    assert result.returncode == 0, result.stderr
    assert [line["printed"] for line in read_out(out)] == [t + "\n" for t in texts]


def test_malformed_rows_are_reported_each_on_its_own_line(tmp_path: Path) -> None:
    program = tmp_path / "echo.sgl"
    program.write_text("param q\nprint(q)\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(
        b'{"q": "first"}\n'
        b'{"q": oops}\n'
        b"\n"
        b"[1, 2]\n"
        b'{"q": "caf\xe9"}\n'
        + (b'{"q": ' + b"9" * 5000 + b"}\n")
        + (b"[" * 100_000 + b"\n")
        + b'{"q": "last"}'
    )
    out = tmp_path / "out.jsonl"

    result = run(program, "--backend", "test", "--batch", rows, "--out", out)

    assert result.returncode == 1
    assert "2 of 7 rows ok" in result.stderr and "Traceback" not in result.stderr
    lines = read_out(out)
    assert [line["index"] for line in lines] == list(range(7))
    assert [line["printed"] for line in (lines[0], lines[6])] == ["first\n", "last\n"]
    assert lines[1] == {
        "index": 1,
        "input": None,
        "output": None,
        "printed": "",
        "error": f"{rows}:2:7: value error: not a JSON line: Expecting value\n"
        '    {"q": oops}\n'
        "          ^",
    }
    assert lines[2]["error"].startswith(
        f"{rows}:4:1: value error: each line must be a JSON object of params"
    )
    assert lines[3]["error"].startswith(f"{rows}:5:11: value error: this line is not UTF-8 text")
    assert lines[4]["error"].startswith(f"{rows}:6:1: value error: not a usable JSON line")
    assert lines[5]["error"].startswith(f"{rows}:7:1: value error: not a usable JSON line")
