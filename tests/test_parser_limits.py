"""Hostile source files: deep nesting and bad encodings give located errors (or run), never an
internal error, in `sgl check`, `sgl run` and the loader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_lang.errors import SglError, SglImportError, SglSyntaxError
from sgl_lang.grammar import MAX_BRACKET_DEPTH, MAX_EXPR_DEPTH, MAX_INDENT_LEVELS, parse_text
from sgl_lang.loader import Loader, read_source

ROOT = Path(__file__).resolve().parent.parent


def sgl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`sgl ARGS` in a fresh interpreter (the default recursion limit, as a user gets it)."""
    command = [sys.executable, "-m", "sgl_lang.cli", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def check_and_run(path: Path) -> str:
    """What `sgl run` prints, after `sgl check` passed; neither may fail."""
    checked = sgl("check", path)
    assert checked.returncode == 0, checked.stderr
    ran = sgl("run", path)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def error_of(path: Path) -> str:
    """The report of `sgl check` and of `sgl run`, which must be the same located error."""
    checked, ran = sgl("check", path), sgl("run", path)
    assert checked.returncode == ran.returncode == 1
    assert "internal error" not in checked.stderr + ran.stderr
    assert checked.stderr.startswith(ran.stderr)
    return ran.stderr


def total(terms: int, operator: str = "+") -> str:
    return operator.join(["1"] * terms)


def nested_ifs(levels: int) -> str:
    lines = [" " * level + "if true:" for level in range(levels)]
    return "\n".join([*lines, " " * levels + "print(1)"]) + "\n"


# ---------------------------------------------------------------- deep nesting


def test_a_flat_sum_of_a_thousand_terms_checks_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "sum.sgl"
    path.write_text(f"x = {total(1000)}\nprint(x)\nprint('{{{total(1000, '-')}}}')\n")
    assert check_and_run(path) == "1000\n-998\n"


def test_chains_up_to_the_depth_limit_check_and_run(tmp_path: Path) -> None:
    """The deepest trees the parser returns: a call around a chain of MAX_EXPR_DEPTH - 1
    levels, unary signs, `not`s and method calls."""
    path = tmp_path / "deep.sgl"
    depth = MAX_EXPR_DEPTH - 1
    path.write_text(
        f"print({total(depth)})\n"
        f"print({'-' * (depth - 1)}1)\n"
        f"print({'not ' * (depth - 1)}true)\n"
        f"print('a'{'.upper()' * (depth // 2 - 1)})\n"
    )
    assert check_and_run(path) == f"{depth}\n1\ntrue\nA\n"  # an even number of `-` and `not`


def test_an_expression_deeper_than_the_limit_is_a_located_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.sgl"
    path.write_text(f"x = 2\nprint({total(MAX_EXPR_DEPTH)})\n")
    report = error_of(path)
    assert report.startswith(
        f"{path}:2:9: syntax error: expression nested too deeply (more than 2000 levels)\n"
        "    print(1+1+1"
    )
    assert "hint: split it into several statements" in report


def test_five_hundred_nested_lists_are_a_located_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "lists.sgl"
    path.write_text("x = " + "[" * 500 + "]" * 500 + "\n")
    report = error_of(path)
    column = len("x = ") + MAX_BRACKET_DEPTH + 1
    assert report.startswith(
        f"{path}:1:{column}: syntax error: too many nested brackets (more than 200)\n"
    )
    assert report.splitlines()[2] == "    " + " " * (column - 1) + "^"


def test_two_hundred_nested_brackets_check_and_run(tmp_path: Path) -> None:
    path = tmp_path / "lists.sgl"
    depth = MAX_BRACKET_DEPTH
    path.write_text(f"x = {'[' * (depth - 1)}({1}){']' * (depth - 1)}\nprint(x)\n")
    assert check_and_run(path) == "[" * (depth - 1) + "1" + "]" * (depth - 1) + "\n"


def test_a_thousand_indentation_levels_are_a_located_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "indent.sgl"
    path.write_text(nested_ifs(1000))
    report = error_of(path)
    line = MAX_INDENT_LEVELS + 2
    assert report.startswith(
        f"{path}:{line}:1: syntax error: too many levels of indentation (more than 100)\n"
    )


def test_a_hundred_indentation_levels_check_and_run(tmp_path: Path) -> None:
    path = tmp_path / "indent.sgl"
    path.write_text(nested_ifs(MAX_INDENT_LEVELS))
    assert check_and_run(path) == "1\n"


def test_nesting_errors_in_an_interpolation_point_into_the_string() -> None:
    """The `{` of an interpolation is a bracket too: 200 `(` inside it are 201 brackets."""
    with pytest.raises(SglSyntaxError) as info:
        parse_text('x = "a{' + "(" * 200 + "1" + ")" * 200 + '}"', "t.sgl")
    assert info.value.render().splitlines()[0] == (
        "t.sgl:1:207: syntax error: too many nested brackets (more than 200)"
    )


# ---------------------------------------------------------------- encodings


def test_a_byte_order_mark_is_accepted_and_columns_are_unaffected(tmp_path: Path) -> None:
    path = tmp_path / "bom.sgl"
    path.write_bytes(b"\xef\xbb\xbfprint('ok')\n")
    assert check_and_run(path) == "ok\n"
    path.write_bytes(b"\xef\xbb\xbfx = (\n")
    assert error_of(path).startswith(
        f"{path}:1:5: syntax error: `(` was never closed\n    x = (\n        ^\n"
    )


def test_invalid_utf8_is_a_syntax_error_at_the_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "bad.sgl"
    path.write_bytes(b"x = 1\nprint('\xc3\xa9t\xe9')\n\xff\n")
    assert error_of(path) == (
        f"{path}:2:10: syntax error: invalid UTF-8: byte 0xe9 (a program file must be UTF-8)\n"
        "    print('ét\ufffd')\n"
        "             ^\n"
    )


def test_invalid_utf8_in_an_import_is_located_in_the_imported_file(tmp_path: Path) -> None:
    (tmp_path / "lib.sgl").write_bytes(b"\r\n\r\nx = '\x80'\r\n")
    path = tmp_path / "main.sgl"
    path.write_text('import "lib.sgl" as lib\nprint(lib.x)\n')
    assert error_of(path).startswith(
        f"{tmp_path / 'lib.sgl'}:3:6: syntax error: invalid UTF-8: byte 0x80"
    )


def test_crlf_and_cr_line_ends_are_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "ends.sgl"
    path.write_bytes(b"x = 1\r\nif x:\r    print(x)\r\nprint(2)\r")
    assert check_and_run(path) == "1\n2\n"
    path.write_bytes(b"x = 1\ry = (\r\n")
    assert error_of(path).startswith(f"{path}:2:5: syntax error: `(` was never closed\n")


@pytest.mark.parametrize(
    ("char", "shown"), [("\0", "U+0000"), ("\u2028", "U+2028"), ("\ufeff", "U+FEFF")]
)
def test_invisible_characters_are_named_in_syntax_errors(char: str, shown: str) -> None:
    with pytest.raises(SglSyntaxError) as info:
        parse_text(f"x = 1{char}\n", "t.sgl")
    assert info.value.render().splitlines()[0] == (
        f"t.sgl:1:6: syntax error: unexpected character {shown}"
    )


def test_a_path_that_is_not_utf8_is_reported_not_crashed_on(tmp_path: Path) -> None:
    path = Path(os.fsdecode(bytes(tmp_path) + b"/n\xff.sgl"))
    path.write_bytes(b"x = (\n")
    report = error_of(path)
    assert report.startswith(f"{tmp_path}/n\\udcff.sgl:1:5: syntax error: ")


# ---------------------------------------------------------------- reading with a cap


def test_a_capped_read_takes_only_regular_files_up_to_the_cap(tmp_path: Path) -> None:
    small = tmp_path / "small.sgl"
    small.write_text("x = 1\n")
    assert read_source(small, max_bytes=6).text == "x = 1\n"
    with pytest.raises(SglImportError, match="larger than 5 bytes"):
        read_source(small, max_bytes=5)
    fifo = tmp_path / "fifo.sgl"
    os.mkfifo(fifo)  # without a writer, reading it would wait forever
    for path in (Path("/dev/zero"), fifo, tmp_path):
        with pytest.raises(SglImportError, match="not a regular file"):
            read_source(path, max_bytes=1 << 20)


def test_a_capped_loader_reports_a_large_import_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "big.sgl").write_text("x = 1\n" * 1000)
    path = tmp_path / "main.sgl"
    path.write_text('import "big.sgl" as big\n')
    loader = Loader(max_bytes=1000)
    (problem,) = loader.check(loader.load(path))
    assert isinstance(problem, SglError) and problem.span is not None
    assert problem.render().splitlines()[0] == (
        f"{path}:1:1: import error: cannot read `{tmp_path / 'big.sgl'}`: larger than 1000 bytes"
    )


def test_a_nul_in_an_import_path_is_a_syntax_error(tmp_path: Path) -> None:
    """Found by the fuzz test: a path with a NUL made resolving the import raise ValueError."""
    path = tmp_path / "main.sgl"
    path.write_text('import "lib\\0.sgl" as lib\n')
    assert error_of(path).startswith(
        f"{path}:1:8: syntax error: an import path cannot contain a NUL character\n"
        '    import "lib\\0.sgl" as lib\n'
        "           ^^^^^^^^^^^\n"
    )
