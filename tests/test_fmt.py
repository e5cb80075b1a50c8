"""`sgl fmt`: the canonical layout, idempotent, comments kept, the AST unchanged (on every
example and program of the repo and on the parser's fuzz corpus)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from test_parser import CORPUS, FUZZ, mutated_programs, slices

from sgl_lang import fmt
from sgl_lang.errors import SglSyntaxError
from sgl_lang.fmt import FormatError, format_source, same_program
from sgl_lang.grammar import parse_text

ROOT = Path(__file__).resolve().parents[1]
ROUND_TRIPS = settings(FUZZ, max_examples=150)
FILES = sorted(
    [
        *ROOT.glob("examples/*.sgl"),
        *ROOT.glob("benchmarks/workloads/*.sgl"),
        *(ROOT / "tests" / "programs").rglob("*.sgl"),
    ]
)

MESSY = """\
# header comment


param   x=  1
def f( a,b = 2 ):   # trailing
\treturn a+-b



if x>1 :
\t# inside
\ty=[1,
\t  2,  # two
\t   3]
\t# end of if
else:
\ty = { "a" :1 , "b":-2 }
z = y[ 1 : 2 ]
print( f(x , b= 3) , z , not x, x not   in [1] )
schema P:
\tname : str?
\ttags: list[ str ]
user "hi {x}"
assistant gen answer( max_tokens = 8 , stop = "\\n" )
for i in range(3):
\tif i == 1:

\t\tpass
\t# about the inner if
print(- x)
"""

CANONICAL = """\
# header comment


param x = 1
def f(a, b=2):  # trailing
    return a + -b


if x > 1:
    # inside
    y = [1,
        2,  # two
        3]
    # end of if
else:
    y = {"a": 1, "b": -2}
z = y[1:2]
print(f(x, b=3), z, not x, x not in [1])
schema P:
    name: str?
    tags: list[str]
user "hi {x}"
assistant gen answer(max_tokens=8, stop="\\n")
for i in range(3):
    if i == 1:
        pass
    # about the inner if
print(-x)
"""


def comments(text: str) -> list[str]:
    return [c.strip() for c in re.findall(r"#[^\n]*", text)]


def check_round_trip(text: str) -> None:
    """A text that parses formats to the same program, keeps its comments, and formatting
    the result changes nothing."""
    try:
        program = parse_text(text, "fuzz.sgl")
    except SglSyntaxError:
        return
    formatted = format_source(text, "fuzz.sgl")
    assert same_program(program, parse_text(formatted, "fuzz.sgl"))
    assert format_source(formatted, "fuzz.sgl") == formatted
    if "#" not in re.sub(r"('''|\"\"\"|\"|').*?\1", "", text, flags=re.S):
        return  # a `#` inside a string is not a comment
    assert comments(formatted) == comments(text)


def test_a_messy_program_gets_the_canonical_layout() -> None:
    assert format_source(MESSY) == CANONICAL
    assert format_source(CANONICAL) == CANONICAL


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_program_of_the_repo_round_trips(path: Path) -> None:
    check_round_trip(path.read_text("utf-8"))


def test_the_examples_are_formatted() -> None:
    for path in ROOT.glob("examples/*.sgl"):
        text = path.read_text("utf-8")
        assert format_source(text, str(path)) == text, path


@ROUND_TRIPS
@given(mutated_programs())
def test_mutated_programs_round_trip(text: str) -> None:
    check_round_trip(text)


@ROUND_TRIPS
@given(slices())
def test_program_slices_round_trip(text: str) -> None:
    check_round_trip(text)


def test_same_program_sees_a_changed_program() -> None:
    assert same_program(parse_text("x = [1, 2]\n"), parse_text("x = [1,\n  2]  # c\n"))
    assert not same_program(parse_text("x = 1\n"), parse_text("x = 2\n"))
    assert not same_program(parse_text("x = a - 1\n"), parse_text("x = a\n-1\n"))


def test_a_formatter_bug_is_refused_not_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmt._Printer, "print", lambda self: "x = 2\n")
    with pytest.raises(FormatError, match="change the program"):
        format_source("x = 1\n")


def sgl_fmt(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sgl_lang.cli", "fmt", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_command_checks_rewrites_and_reports_syntax_errors(tmp_path: Path) -> None:
    messy, broken = tmp_path / "messy.sgl", tmp_path / "sub" / "broken.sgl"
    messy.write_text(MESSY)
    broken.parent.mkdir()
    broken.write_text("x = [1, 2\n")
    checked = sgl_fmt("--check", tmp_path)
    assert checked.returncode == 1 and messy.read_text() == MESSY
    assert f"would reformat {messy}" in checked.stderr
    assert f"{broken}:1:5" in checked.stderr and "was never closed" in checked.stderr
    assert "Traceback" not in checked.stderr
    assert sgl_fmt(messy).returncode == 0 and messy.read_text() == CANONICAL
    again = sgl_fmt("--check", messy)
    assert again.returncode == 0 and "0 file(s) would be reformatted, 1 unchanged" in again.stderr


def test_the_corpus_is_not_empty() -> None:
    assert len(CORPUS) > 10 and len(FILES) > 20
