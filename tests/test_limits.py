"""Resource limits: every attack that builds a huge value, a wide fork, a busy loop or a
backtracking regex is a located `limit error` (or stops on one Ctrl-C), never an exhausted
machine. Limits are kept small through the interpreter's configuration, so nothing here
allocates more than a few megabytes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sgl_lang.backends.test import TestBackend
from sgl_lang.config import RunConfig, load_config
from sgl_lang.errors import SglError, SglLimitError
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.limits import Limits
from sgl_lang.protocol import GenRequest, GenResult

ROOT = Path(__file__).resolve().parent.parent
SMALL = Limits(max_text_len=1_000, max_items=100, max_fork_width=10, regex_timeout_s=0.5)


def run(source: str, limits: Limits = SMALL, backend: TestBackend | None = None) -> Interpreter:
    interpreter = Interpreter(backend or TestBackend(), limits=limits)
    asyncio.run(interpreter.run_program(parse_text(source, "t.sgl")))
    return interpreter


def limit_error(source: str, limits: Limits = SMALL) -> SglLimitError:
    """The limit error `source` stops with; it is located and says how to raise the limit."""
    with pytest.raises(SglLimitError) as caught:
        run(source, limits)
    error = caught.value
    assert error.kind == "limit error"
    assert error.span is not None
    assert error.hint is not None and "raise it with" in error.hint
    assert "Traceback" not in error.render()
    return error


def located(error: SglError) -> str:
    """`line:col` of an error."""
    assert error.span is not None
    return error.span.location.split(":", 1)[1]


# ---------------------------------------------------------------- values built too large


def test_a_huge_format_width_is_refused_before_it_is_built() -> None:
    error = limit_error('x = 1\ny = "{x:>900000000}"\n', Limits())
    assert located(error) == "2:6"
    assert "900,000,000 characters, over the limit of 10,000,000 (max_text_len)" in error.message
    assert "`max_text_len = ...` in sgl.toml" in str(error.hint)
    error = limit_error('x = 1.5\ny = "{x:.900000000f}"\n', Limits())
    assert "(max_text_len)" in error.message


def test_str_format_checks_widths_also_nested_and_the_text_it_builds() -> None:
    assert "format()" in limit_error('y = "{{:>900000000}}".format(1)\n', Limits()).message
    assert "format()" in limit_error('y = "{{:{{}}}}".format(1, 900000000)\n', Limits()).message
    error = limit_error('s = "x" * 600\ny = "{{0}}{{0}}".format(s)\n')
    assert located(error) == "2:5"
    assert run('y = "{{:>5}}|{{}}".format(1, "a")\n').scope.vars["y"] == "    1|a"


def test_replace_with_a_long_replacement_is_refused() -> None:
    error = limit_error('s = "ab" * 10\ny = s.replace("a", "x" * 200)\n')
    assert located(error) == "2:5"
    assert "replace() would build a str too long: 2,010 characters" in error.message
    limit_error('y = ("x" * 1000).replace("x", "y" * 100000)\n', Limits())
    limit_error('y = "abc".replace("", "z" * 600)\n')
    assert run('y = "aaa".replace("a", "bb", 2)\n').scope.vars["y"] == "bbbba"


@pytest.mark.parametrize(
    "step",
    ["s = s + s", "s += s", 's = "{s}{s}"', "s = s * 2"],
    ids=["plus", "augmented", "interpolation", "repeat"],
)
def test_doubling_a_str_in_a_loop_stops_at_the_limit(step: str) -> None:
    error = limit_error(f's = "a"\nwhile true:\n    {step}\n', Limits())
    assert located(error).startswith("3:")
    assert "over the limit of 10,000,000 (max_text_len)" in error.message


@pytest.mark.parametrize(
    "step",
    ["xs = xs + xs", "xs.extend(xs)", "xs.append(1)", "xs.insert(0, 1)", "xs = xs * 3"],
    ids=["plus", "extend", "append", "insert", "repeat"],
)
def test_growing_a_list_in_a_loop_stops_at_the_limit(step: str) -> None:
    error = limit_error(f"xs = [1]\nwhile true:\n    {step}\n")
    assert located(error).startswith("3:")
    assert "over the limit of 100 (max_items)" in error.message


@pytest.mark.parametrize(
    "call",
    [
        's.split(",")',
        "s.split()",
        're.findall("a", s)',
        're.findall("(a)(,)", s)',
        're.split(",", s)',
    ],
)
def test_splitting_into_more_pieces_than_max_items_is_refused(call: str) -> None:
    error = limit_error(f'import re\ns = "a, " * 150\nxs = {call}\n')
    assert located(error).startswith("3:") and "over the limit of 100 (max_items)" in error.message


def test_splits_within_max_items_are_python_s() -> None:
    source = (
        'import re\ns = "a,b,c"\nxs = [s.split(","), s.split(",", 1), s.split(maxsplit=0),'
        ' re.split(",", s, 1), re.findall("(a)|(b)", s), re.findall("[ab]", s)]\n'
    )
    assert run(source).scope.vars["xs"] == [
        ["a", "b", "c"],
        ["a", "b,c"],
        ["a,b,c"],
        ["a", "b,c"],
        [["a", ""], ["", "b"]],
        ["a", "b"],
    ]
    assert len(run('xs = ("x " * 99).split()\n').scope.vars["xs"]) == 99  # at the limit


def test_growing_a_dict_in_a_loop_stops_at_the_limit() -> None:
    error = limit_error("d = {}\ni = 0\nwhile true:\n    d[i] = i\n    i = i + 1\n")
    assert located(error).startswith("4:") and "a new dict key" in error.message
    error = limit_error("d = {}\nfor k in range(100):\n    d[k] = 1\nd.extra = 2\n")
    assert located(error).startswith("4:")
    assert run("d = {1: 0}\nfor k in range(100):\n    d[1] = k\n").scope.vars["d"] == {1: 99}


def test_squaring_an_int_in_a_loop_stops_at_the_limit() -> None:
    error = limit_error("n = 3\nwhile true:\n    n = n * n\n")
    assert located(error) == "3:9"
    assert "`*` would build an int too large: about" in error.message
    assert run("n = -2 * 3\n").scope.vars["n"] == -6


def test_builtins_and_modules_check_what_they_build() -> None:
    assert "range()" in limit_error("xs = range(101)\n").message
    assert "join()" in limit_error('y = ",".join(["x" * 30] * 50)\n').message
    assert "sum()" in limit_error("y = sum([[1] * 60, [2] * 60], [])\n").message
    error = limit_error('import re\ny = re.sub("", "z" * 100, "a" * 50)\n')
    assert "re.sub()" in error.message and located(error) == "2:5"
    error = limit_error('import text\ny = text.chunk("w " * 400, 300, overlap=299)\n')
    assert "text.chunk()" in error.message
    assert run('import re\ny = re.sub("(a)", r"<\\1>", "ab")\n').scope.vars["y"] == "<a>b"


@pytest.mark.parametrize(
    "use",
    [
        'y = "{xs}"',
        "y = str(xs)",
        "print(xs)",
        "y = json_dumps(xs)",
        "y = json_dumps([[1]], indent=2000)",
    ],
    ids=["interpolation", "str", "print", "json", "json-indent"],
)
def test_a_list_holding_one_long_str_many_times_is_bounded_as_text(use: str) -> None:
    error = limit_error(f'xs = ["x" * 600] * 5\n{use}\n')
    assert located(error).startswith("2:")
    assert "(max_text_len)" in error.message


def test_the_prompt_of_a_state_is_bounded_too() -> None:
    error = limit_error('while true:\n    "0123456789"\n')
    assert "appending to the prompt" in error.message and located(error) == "2:5"


def test_a_fork_wider_than_the_limit_is_refused_before_any_branch_starts() -> None:
    error = limit_error('fork 10000000:\n    "x"\n', Limits())
    assert located(error) == "1:1"
    assert "`fork` of 10,000,000 branches is over the limit of 1,000" in error.message
    assert "(max_fork_width)" in error.message
    limit_error("xs = fork i in range(11):\n    y = i\n")
    assert len(run("xs = fork 10:\n    y = 1\n").scope.vars["xs"]) == 10


# ---------------------------------------------------------------- steps, time, regexes


def test_max_steps_stops_a_busy_loop_after_exactly_that_many_steps() -> None:
    interpreter = Interpreter(TestBackend(), limits=Limits(max_steps=2_500))
    with pytest.raises(SglLimitError) as caught:
        asyncio.run(interpreter.run_program(parse_text("x = 0\nwhile true:\n    x = 1\n", "t.sgl")))
    assert interpreter.num_steps == 2_501
    assert "more than 2,500 steps" in caught.value.message
    assert "--max-steps N" in str(caught.value.hint)
    assert run("x = 1\n", Limits(max_steps=2)).scope.vars["x"] == 1


def test_timeout_stops_a_busy_loop() -> None:
    error = limit_error("while true:\n    pass\n", Limits(timeout_s=0.2))
    assert "longer than its time limit of 0.2 s" in error.message
    assert "--timeout SECONDS" in str(error.hint)


class HangingBackend(TestBackend):
    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        await asyncio.sleep(3600)
        raise AssertionError("the run's timeout did not stop a hanging backend call")


def test_timeout_stops_a_backend_call_at_its_statement() -> None:
    with pytest.raises(SglLimitError) as caught:
        run('x = 1\n"q"\ngen a\n', Limits(timeout_s=0.2), HangingBackend())
    assert located(caught.value) == "3:1"


def test_a_backtracking_regex_is_a_limit_error() -> None:
    error = limit_error('import re\nm = re.search("(a|aa)+$", "a" * 40 + "!")\n')
    assert located(error) == "2:5"
    assert "re.search() ran longer than the regex time limit of 0.5 s" in error.message
    assert "`regex_timeout_s = ...`" in str(error.hint)
    # the classic `(a+)+$` no longer backtracks for ever at all
    assert run('import re\nm = re.search("(a+)+$", "a" * 40 + "b")\n').scope.vars["m"] is None


# ---------------------------------------------------------------- configuration and the CLI


def test_limits_are_validated_and_set_in_sgl_toml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`max_items` must be a positive integer"):
        Limits(max_items=0)
    with pytest.raises(ValueError, match="`timeout_s` must be a number of seconds > 0"):
        RunConfig(timeout_s=-1)
    config = tmp_path / "sgl.toml"
    config.write_text("max_text_len = 50\nmax_fork_width = 3\ntimeout_s = 2.5\n")
    limits = load_config(config).limits
    assert limits == Limits(max_text_len=50, max_fork_width=3, timeout_s=2.5)
    assert RunConfig().limits == Limits()


def sgl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sgl_lang.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_max_steps_and_timeout_flags(tmp_path: Path) -> None:
    (tmp_path / "loop.sgl").write_text("x = 0\nwhile true:\n    x = x + 1\n")
    result = sgl("run", "loop.sgl", "--backend", "test", "--max-steps", "5000", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("loop.sgl:")
    assert "limit error: the program ran more than 5,000 steps" in result.stderr
    assert "Traceback" not in result.stderr
    result = sgl("run", "loop.sgl", "--backend", "test", "--timeout", "0.5", cwd=tmp_path)
    assert result.returncode == 1
    assert "limit error: the program ran longer than its time limit of 0.5 s" in result.stderr
    (tmp_path / "sgl.toml").write_text("max_steps = 300\n")
    result = sgl("run", "loop.sgl", "--backend", "test", cwd=tmp_path)
    assert "more than 300 steps" in result.stderr


def interrupt(program: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `program` (which prints "started" and then busies itself), send one SIGINT."""
    (tmp_path / "busy.sgl").write_text(program)
    command = [sys.executable, "-m", "sgl_lang.cli", "run", "busy.sgl", "--backend", "test"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "started\n"
    time.sleep(0.5)  # well inside the busy part
    process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("one SIGINT did not stop the program") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_one_sigint_stops_a_busy_loop(tmp_path: Path) -> None:
    result = interrupt('print("started")\nx = 0\nwhile true:\n    x = x + 1\n', tmp_path)
    assert result.returncode == 130
    assert result.stderr == "interrupted\n"


def test_one_sigint_stops_a_long_regex(tmp_path: Path) -> None:
    (tmp_path / "sgl.toml").write_text("regex_timeout_s = 3600\n")
    program = 'import re\nprint("started")\nm = re.search("(a|aa)+$", "a" * 80 + "!")\n'
    result = interrupt(program, tmp_path)
    assert result.returncode == 130
    assert result.stderr == "interrupted\n"
