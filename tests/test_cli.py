"""The command line, as a user runs it: `sgl run` and `sgl check` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgl_lang.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.sgl"))


def sgl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sgl_lang.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_hello_runs_on_the_test_backend() -> None:
    result = sgl("run", "examples/hello.sgl", "--backend", "test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("model said: ")
    assert len(result.stdout.strip()) > len("model said:")
    assert result.stderr == ""


def test_check_reports_every_problem_with_carets(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sgl"
    broken.write_text("answer = 1\nprint(anser)\ngen x(temprature=0)\nreturn 2\n")
    result = sgl("check", str(broken))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{broken}:2:7: name error: `anser` is not defined\n"
        "    print(anser)\n"
        "          ^^^^^\n"
        "hint: did you mean `answer`?\n"
        f"{broken}:3:7: type error: `gen` has no argument `temprature`\n"
        "    gen x(temprature=0)\n"
        "          ^^^^^^^^^^^^\n"
        "hint: did you mean `temperature`?\n"
        f"{broken}:4:1: syntax error: `return` outside a function\n"
        "    return 2\n"
        "    ^^^^^^^^\n"
        "3 error(s), 0 warning(s)\n"
    )


def test_check_passes_on_the_examples_and_warnings_fail_only_with_strict(tmp_path: Path) -> None:
    assert sgl("check", *map(str, EXAMPLES)).returncode == 0
    noisy = tmp_path / "noisy.sgl"
    noisy.write_text("x = 1\nx\n")
    relaxed, strict = sgl("check", str(noisy)), sgl("check", "--strict", str(noisy))
    assert (relaxed.returncode, strict.returncode) == (0, 1)
    assert 'hint: write "{x}" to append it' in relaxed.stderr


def test_syntax_errors_show_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sgl"
    bad.write_text("xs = fork i in [1, 2]:\nprint(1)\n")
    result = sgl("run", str(bad), "--backend", "test")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{bad}:2:1: syntax error: expected an indented block")


def test_set_parses_json_and_rejects_unknown_params(tmp_path: Path) -> None:
    program = tmp_path / "p.sgl"
    program.write_text("param n\nparam word\nprint(n + 1, word)\n")
    ok = sgl("run", str(program), "--backend", "test", "--set", "n=41", "--set", "word=hi")
    assert (ok.returncode, ok.stdout) == (0, "42 hi\n")
    missing = sgl("run", str(program), "--backend", "test", "--set", "n=1")
    assert missing.returncode == 1
    assert "param `word` has no default and no value was given" in missing.stderr
    unknown = sgl("run", str(program), "--backend", "test", "--set", "m=1")
    assert unknown.returncode == 1 and "unknown param `m`" in unknown.stderr


def test_usage_errors_exit_2() -> None:
    assert sgl("run", "examples/hello.sgl", "--no-such-flag").returncode == 2
    assert sgl("run", "does-not-exist.sgl").returncode == 2
    assert sgl("run", "examples/hello.sgl", "--set", "nonsense").returncode == 2


def test_help_and_check_start_without_the_engine() -> None:
    code = (
        "import sys\n"
        "from sgl_lang.cli import main\n"
        "for args in (['--help'], ['run', '--help'], ['check', '--backend', 'local', "
        "'examples/hello.sgl']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, args\n"
        "heavy = ('torch', 'numpy', 'transformers', 'safetensors', 'llguidance')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_trace_and_stream_write_to_stderr_only() -> None:
    result = sgl("run", "examples/hello.sgl", "--backend", "test", "--trace", "--stream")
    assert result.returncode == 0
    assert result.stdout.startswith("model said: ")
    answer = result.stdout.removeprefix("model said: ").strip()
    assert answer in result.stderr  # streamed, and highlighted in the trace
    assert "state 0" in result.stderr and "prompt tokens" in result.stderr


def test_batch_writes_every_row_and_records_failures(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "a?"}\n{"other": 1}\n{"question": "c?", "gold": "x"}\n')
    out = tmp_path / "out.jsonl"
    result = sgl(
        "run", "examples/batch_qa.sgl", "--backend", "test", "--batch", str(rows), "--out", str(out)
    )
    assert result.returncode == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[0]["error"] is None and isinstance(lines[0]["output"]["answer"], str)
    assert "param `question` has no default" in lines[1]["error"]
    assert lines[2]["error"] is None and lines[2]["input"]["gold"] == "x"
    assert "2 of 3 rows ok" in result.stderr


def test_permissions_are_granted_by_flags(tmp_path: Path) -> None:
    program = tmp_path / "read.sgl"
    (tmp_path / "note.txt").write_text("secret")
    program.write_text('import files\nprint(files.read("note.txt"))\n')
    denied = sgl("run", str(program), "--backend", "test", cwd=tmp_path)
    allowed = sgl("run", str(program), "--backend", "test", "--allow-read", cwd=tmp_path)
    assert denied.returncode == 1 and "reading files needs --allow-read" in denied.stderr
    assert (allowed.returncode, allowed.stdout) == (0, "secret\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_runs_on_the_test_backend(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    args = ["run", str(path.relative_to(ROOT)), "--backend", "test"]
    if path.stem == "batch_qa":
        args += ["--batch", "examples/data/questions.jsonl", "--out", str(tmp_path / "out.jsonl")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "error" not in result.stderr
