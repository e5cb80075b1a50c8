"""`gen` arguments grammar=, logprobs=, min_tokens, stop_regex, include_stop and reasoning: on
the test backend (which honours them all), in `meta(NAME)`, as located errors, and in
`sgl check --backend`'s report where a backend cannot honour them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import lark
import pytest
from click.testing import CliRunner

from sgl_lang import cli
from sgl_lang.backends.test import Reply, TestBackend
from sgl_lang.errors import SglError
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import Capabilities

ROOT = Path(__file__).resolve().parent.parent
OPENAI = "openai:gpt-4o@http://127.0.0.1:9/v1"  # creating it needs no network
ARITHMETIC = r"""
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""


def run(source: str, backend: TestBackend | None = None, **options: object) -> Interpreter:
    interpreter = Interpreter(backend or TestBackend(), **options)  # type: ignore[arg-type]
    asyncio.run(interpreter.run_program(parse_text(source, "t.sgl")))
    return interpreter


def error_of(source: str, backend: TestBackend | None = None) -> SglError:
    with pytest.raises(SglError) as caught:
        run(source, backend)
    return caught.value


def test_a_grammar_from_a_constant_yields_only_parseable_text() -> None:
    source = f'ARITH = """{ARITHMETIC}"""\nxs = [none] * 20\nfor i in range(20):\n'
    source += '    "Expression {i}: "\n    gen e(grammar=ARITH, seed=i)\n    xs[i] = e\n'
    outputs = run(source).scope.vars["xs"]
    parser = lark.Lark(ARITHMETIC, parser="earley")
    for text in outputs:
        parser.parse(text)
    assert len(set(outputs)) > 10


def test_a_canned_reply_must_parse_and_an_invalid_grammar_is_a_located_error() -> None:
    error = error_of(f'gen e(grammar="""{ARITHMETIC}""")', TestBackend([Reply("1+")]))
    assert error.message.endswith("the output '1+' ends before the grammar allows it to")
    error = error_of('x = 1\ngen e(grammar="start: expr")')
    assert (error.span.line, error.span.column) == (2, 7)
    assert error.message.startswith("invalid grammar: ") and "expr" in error.message


def test_an_unenforced_grammar_is_checked_with_lark_and_retried() -> None:
    backend = TestBackend([Reply("1+"), Reply("(1+2)*3")])
    backend.capabilities = Capabilities(frozenset(), frozenset())
    source = f'gen e(grammar="""{ARITHMETIC}""")\nprint(e)'
    interpreter = run(source, backend, num_retries=1)
    assert interpreter.scope.vars["e"] == "(1+2)*3"
    assert [call.rejected is not None for call in interpreter.calls] == [True, False]


def test_logprobs_in_meta_one_per_token_with_the_top_alternatives() -> None:
    interpreter = run('"Say: "\ngen s(max_tokens=5, logprobs=3)\nm = meta(s)')
    meta, text = interpreter.scope.vars["m"], interpreter.scope.vars["s"]
    assert "".join(entry["token"] for entry in meta["logprobs"]) == text
    for entry in meta["logprobs"]:
        assert entry["logprob"] <= 0 and len(entry["top"]) <= 3
        assert next(iter(entry["top"])) == entry["token"]
    error = error_of("gen s(logprobs=21)")
    assert error.message == "`logprobs` must be between 0 and 20, not 21"


def test_min_tokens_stop_regex_and_include_stop_on_free_text() -> None:
    backend = TestBackend([Reply("Done."), Reply("a b 12 c"), Reply("a b 12 c")])
    source = (
        "gen short(min_tokens=4, max_tokens=20)\n"
        'gen cut(stop_regex="[0-9]+")\n'
        'gen kept(stop_regex="[0-9]+", include_stop=true)\n'
    )
    found = run(source, backend).scope.vars
    assert found["short"].startswith("Done.") and len(found["short"].split()) >= 4
    assert (found["cut"], found["kept"]) == ("a b ", "a b 12")
    error = error_of('gen x(regex="a+", min_tokens=2)')
    assert "cannot be used with a constraint" in error.message
    assert error_of('gen x(stop_regex="a*")').message.endswith("must not match the empty string")


def test_reasoning_splits_a_think_block_from_the_answer() -> None:
    backend = TestBackend([Reply("<think>Paris is the capital.</think>\nParis"), Reply("Lyon")])
    source = (
        "gen a(reasoning=true)\nr = meta(a).reasoning\n"
        "gen b(reasoning=true)\nnone_given = meta(b).reasoning\n"
    )
    found = run(source, backend).scope.vars
    assert (found["a"], found["r"], found["none_given"]) == ("Paris", "Paris is the capital.", None)
    assert found["b"] == "Lyon"


def test_check_reports_the_options_a_backend_cannot_honour(tmp_path: Path) -> None:
    program = tmp_path / "p.sgl"
    program.write_text(
        'gen e(grammar="start: /[0-9]+/")\ngen s(logprobs=2, stop_regex="x", reasoning=false)\n'
    )
    result = CliRunner().invoke(cli.main, ["check", "--backend", OPENAI, str(program)])
    assert result.exit_code == 1
    assert result.stdout == (
        f"{program}:1:1: gen `e` grammar: NOT enforced by {OPENAI}\n"
        f"{program}:2:7: gen `s` logprobs: honoured by {OPENAI}\n"
        f"{program}:2:19: gen `s` stop_regex: NOT honoured by {OPENAI}\n"
    )
    assert f"{program}:2:19: constraint error: backend `{OPENAI}` cannot honour `stop_regex`" in (
        result.stderr
    )
    ok = CliRunner().invoke(cli.main, ["check", "--backend", "test", str(program)])
    assert ok.exit_code == 0, ok.stderr


def test_the_examples_of_language_md_run_on_the_test_backend() -> None:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    section = text.split("### Grammars, log-probs, stops and reasoning")[1].split("\n### ")[0]
    blocks = re.findall(r"```sgl\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 4
    for block in blocks:
        run(block)


def test_check_finds_an_invalid_literal_grammar(tmp_path: Path) -> None:
    program = tmp_path / "p.sgl"
    program.write_text('gen e(grammar="start: expr")\n')
    result = CliRunner().invoke(cli.main, ["check", str(program)])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"{program}:1:7: value error: invalid grammar: Rule 'expr' used but not defined"
    )
