"""What a backend enforces: `sgl check --backend`'s report and errors, `sgl run` refusing
unenforceable constraints, and `--allow-unenforced` checking outputs and retrying them."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgl_lang import calls, cli, runner
from sgl_lang.backends import anthropic, gemini, http, local, openai
from sgl_lang.backends.test import Reply, TestBackend
from sgl_lang.enforcement import constraint_sites
from sgl_lang.errors import SglError
from sgl_lang.grammar import parse_text
from sgl_lang.interpreter import Interpreter
from sgl_lang.protocol import Capabilities
from sgl_lang.repl import ReplSession

ROOT = Path(__file__).resolve().parent.parent
OPENAI = "openai:gpt-4o@http://127.0.0.1:9/v1"  # creating it needs no network
HINT = (
    "hint: `sgl run --allow-unenforced` generates without the constraint, checks the output "
    "and retries it (--retries N)"
)
PROGRAM = """\
print("started")
"Date: "
gen date(regex="[0-9]{4}-[0-9]{2}-[0-9]{2}")
gen city(json={"type": "object"})
gen free(max_tokens=3)
gen n(type=int)
select pick from ["yes", "no"]
"""


def sgl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sgl_lang.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def like_an_api(*replies: str, constraints: frozenset[str] = frozenset()) -> TestBackend:
    """The test backend answering `replies` in order, enforcing only `constraints` and
    scoring nothing (as chat APIs do)."""
    backend = TestBackend([Reply(text) for text in replies])
    backend.capabilities = Capabilities(constraints, frozenset())
    return backend


def unenforced_errors(program: Path) -> str:
    return (
        f"{program}:3:1: constraint error: backend `{OPENAI}` cannot enforce `regex` while "
        "decoding\n"
        '    gen date(regex="[0-9]{4}-[0-9]{2}-[0-9]{2}")\n'
        "    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        f"{HINT}\n"
        f"{program}:6:1: constraint error: backend `{OPENAI}` cannot enforce `type` while "
        "decoding\n"
        "    gen n(type=int)\n"
        "    ^^^^^^^^^^^^^^^\n"
        f"{HINT}\n"
    )


# ---------------------------------------------------------------- sgl check --backend


def test_check_reports_each_site_and_errors_where_the_backend_cannot_enforce(
    tmp_path: Path,
) -> None:
    program = write(tmp_path / "prog.sgl", PROGRAM)
    result = sgl("check", "--backend", OPENAI, str(program))
    assert result.returncode == 1
    assert result.stdout == (
        f"{program}:3:1: gen `date` regex: NOT enforced by {OPENAI}\n"
        f"{program}:4:1: gen `city` json: enforced by {OPENAI}\n"
        f"{program}:6:1: gen `n` type: NOT enforced by {OPENAI}\n"
        f"{program}:7:1: select `pick` choices: enforced by {OPENAI}\n"
    )
    assert result.stderr == unenforced_errors(program) + "2 error(s), 0 warning(s)\n"


def test_check_passes_when_the_backend_enforces_everything(tmp_path: Path) -> None:
    program = write(tmp_path / "prog.sgl", PROGRAM)
    result = sgl("check", "--backend", "test", str(program))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"{program}:3:1: gen `date` regex: enforced by test\n"
        f"{program}:4:1: gen `city` json: enforced by test\n"
        f"{program}:6:1: gen `n` type: enforced by test\n"
        f"{program}:7:1: select `pick` scored: enforced by test\n"
    )
    assert sgl("check", str(program)).stdout == ""  # no backend, no report


def test_imported_functions_count_but_not_an_imported_file_s_other_statements(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "lib.sgl",
        'gen demo(regex="x")\ndef ask():\n    fork 2:\n        gen inner(choices=["a"])\n',
    )
    write(tmp_path / "main.sgl", 'import "lib.sgl" as lib\nlib.ask()\n')
    result = sgl("check", "--backend", "test", "main.sgl", cwd=tmp_path)
    assert result.stdout == "lib.sgl:4:9: gen `inner` choices: enforced by test\n"


def test_a_select_is_scored_only_when_every_method_it_may_use_is() -> None:
    program = parse_text(
        'm = "greedy"\nselect a from ["x"]\nselect b(method=m) from ["x"]\n'
        'select c(method="unconditional") from ["x"]\n',
        "t.sgl",
    )
    normalized_only = Capabilities(frozenset({"choices"}), frozenset({"normalized"}))
    lines = [site.report_line("b") for site in constraint_sites(program, normalized_only)]
    assert lines == [
        "t.sgl:2:1: select `a` scored: enforced by b",
        "t.sgl:3:1: select `b` choices: enforced by b",
        "t.sgl:4:1: select `c` choices: enforced by b",
    ]
    nothing = Capabilities(frozenset(), frozenset())
    site = constraint_sites(program, nothing)[0]
    assert site.error("b").render() == (
        "t.sgl:2:1: constraint error: backend `b` can neither score the choices of this "
        "`select` nor enforce them while decoding\n"
        '    select a from ["x"]\n'
        "    ^^^^^^^^^^^^^^^^^^^\n" + HINT
    )


# ---------------------------------------------------------------- sgl run refuses


def test_run_refuses_before_anything_runs(tmp_path: Path) -> None:
    program = write(tmp_path / "prog.sgl", PROGRAM)
    result = sgl("run", "--backend", OPENAI, str(program))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == unenforced_errors(program)


def test_batch_runs_refuse_too(tmp_path: Path) -> None:
    program = write(tmp_path / "prog.sgl", "param q\nprint(q)\ngen n(type=int)\n")
    rows = write(tmp_path / "rows.jsonl", '{"q": 1}\n')
    out = tmp_path / "out.jsonl"
    result = sgl("run", "--backend", OPENAI, str(program), "--batch", str(rows), "--out", str(out))
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.startswith(f"{program}:3:1: constraint error: backend `{OPENAI}`")


# ---------------------------------------------------------------- --allow-unenforced


def run_cli(
    monkeypatch: pytest.MonkeyPatch, backend: TestBackend, *args: str
) -> tuple[int, str, str]:
    """`sgl run ARGS` in this process, with every backend URI meaning `backend`."""
    monkeypatch.setattr(runner, "get_backend", lambda uri, **options: backend)
    result = CliRunner().invoke(cli.main, ["run", *args])
    return result.exit_code, result.stdout, result.stderr


def test_allow_unenforced_retries_until_an_output_passes_and_traces_each_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = write(tmp_path / "p.sgl", 'gen n(regex="[0-9]+")\nprint(n)\n')
    trace = tmp_path / "trace.json"
    backend = like_an_api("forty-two", "42")
    code, stdout, stderr = run_cli(
        monkeypatch, backend, str(program), "--allow-unenforced", "--trace-json", str(trace)
    )
    assert (code, stdout) == (0, "42\n")
    assert stderr == (
        "warning: backend `test` does not enforce `regex`: each output is checked, and "
        "generated again (up to 2 times) while it fails\n"
    )
    assert [request.constraint for request in backend.requests] == [None, None]
    assert [request.seed for request in backend.requests] == [None, 1]  # a retry draws anew
    report = json.loads(trace.read_text())
    attempts = [(c["kind"], c["name"], c["attempt"], c["output"]) for c in report["calls"]]
    assert attempts == [("gen", "n", 1, "forty-two"), ("gen", "n", 2, "42")]
    rejected = [call["rejected"] for call in report["calls"]]
    assert rejected == ['the output "forty-two" does not match the regex "[0-9]+"', None]


def test_trace_shows_the_rejected_output_and_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "p.sgl", 'gen n(regex="[0-9]+")\n')
    monkeypatch.chdir(tmp_path)
    backend = like_an_api("forty-two", "42")
    code, _, stderr = run_cli(monkeypatch, backend, "p.sgl", "--allow-unenforced", "--trace")
    assert code == 0
    assert 'rejected: the output "forty-two" does not match the regex "[0-9]+"' in stderr
    assert "call 1: gen n p.sgl:1:1 (attempt 2)" in stderr


def test_allow_unenforced_gives_up_after_the_retries_with_a_constraint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = write(tmp_path / "p.sgl", 'print("started")\ngen n(type=int)\n')
    backend = like_an_api("one", "two", "3")
    code, stdout, stderr = run_cli(
        monkeypatch, backend, str(program), "--allow-unenforced", "--retries", "1"
    )
    assert (code, stdout, len(backend.requests)) == (1, "started\n", 2)
    assert stderr.endswith(
        f'{program}:2:1: constraint error: the output "two" is not a valid int (after 2 '
        "attempts; backend `test` does not enforce `type`)\n"
        "    gen n(type=int)\n"
        "    ^^^^^^^^^^^^^^^\n"
        "hint: more retries (`sgl run --retries N`) or a `temperature` above 0 may help\n"
    )


def run_program(source: str, backend: TestBackend, **options: object) -> Interpreter:
    interpreter = Interpreter(backend, **options)  # type: ignore[arg-type]
    asyncio.run(interpreter.run_program(parse_text(source, "t.sgl")))
    return interpreter


def test_json_is_checked_against_the_schema() -> None:
    source = "schema P:\n    name: str\n    age: int\ngen p(json=P)\n"
    backend = like_an_api(
        '{"name": "Ann"', '{"name": "Ann", "age": "3"}', '{"name": "A", "age": 3}'
    )
    interpreter = run_program(source, backend)
    assert interpreter.scope.vars["p"] == {"name": "A", "age": 3}
    assert [call.rejected for call in interpreter.calls] == [
        'the output "{\\"name\\": \\"Ann\\"" is not valid JSON: Expecting \',\' delimiter: '
        "line 1 column 15 (char 14)",
        "the output does not fit the JSON schema: $.age: '3' is not of type integer",
        None,
    ]


def test_a_select_that_cannot_be_scored_nor_constrained_checks_membership() -> None:
    backend = like_an_api("maybe", "no")
    interpreter = run_program('select pick from ["yes", "no"]\n', backend, num_retries=1)
    assert interpreter.scope.vars["pick"] == "no"
    assert [(c.kind, c.attempt, c.rejected) for c in interpreter.calls] == [
        ("select", 1, 'the output "maybe" is not one of the choices'),
        ("select", 2, None),
    ]


def test_an_enforced_constraint_is_sent_with_the_request_and_never_retried() -> None:
    backend = like_an_api("no", constraints=frozenset({"choices"}))
    interpreter = run_program('gen pick(choices=["yes", "no"])\n', backend)
    assert interpreter.scope.vars["pick"] == "no"
    assert [request.constraint is not None for request in backend.requests] == [True]


def test_checked_output_streams_only_once_it_passes() -> None:
    chunks: list[str] = []
    run_program('gen n(regex="[0-9]+")\n', like_an_api("no", "7"), on_chunk=chunks.append)
    assert chunks == ["7"]


def test_the_cli_default_is_the_interpreter_s() -> None:
    assert cli.DEFAULT_NUM_RETRIES == calls.DEFAULT_NUM_RETRIES


def test_an_output_cut_at_max_tokens_is_checked_as_any_other_and_never_retried() -> None:
    """docs/language.md: "An output cut at `max_tokens` before it satisfies its constraint (by
    the checks above, whether the backend enforces the constraint or not) is a `constraint
    error` at once (hint: raise `max_tokens`), never retried." The checks above: "a `regex`
    matches the whole output" (trailing whitespace included), "`type=` converts (surrounding
    whitespace allowed)"."""
    backend = like_an_api("42  ", "42")
    with pytest.raises(SglError) as caught:
        run_program('gen n(regex="[0-9]+", max_tokens=2)\n', backend)
    assert len(backend.requests) == 1
    assert caught.value.render().startswith(
        "t.sgl:1:1: constraint error: the output was cut at max_tokens=2 before it satisfied "
        'the constraint: "42  "\n'
    )
    interpreter = run_program("gen n(type=int, max_tokens=2)\n", like_an_api("42  "))
    assert interpreter.scope.vars["n"] == 42


def test_an_unreadable_schema_in_a_checked_output_is_a_located_error() -> None:
    """A `json=` schema the output check cannot read (a `$ref` outside the document) is an
    error at the `gen`, not an internal error."""
    backend = like_an_api('{"a": 1}')
    with pytest.raises(SglError) as caught:
        run_program('gen d(json={"$ref": "http://example.com/s.json"})\n', backend)
    assert caught.value.render().startswith(
        "t.sgl:1:1: value error: cannot check the output: only local JSON schema $refs"
    )


# ---------------------------------------------------------------- the REPL


def test_the_repl_checks_and_retries_unenforced_constraints() -> None:
    out = io.StringIO()
    session = ReplSession("test", out=out)
    try:
        session.interpreter.backend = like_an_api("x", "12")
        printed = session.feed("gen n(type=int)\nprint(n + 1)\n")
    finally:
        session.close()
    assert printed == (
        "warning: backend `test` does not enforce `type`: each output is checked, and "
        "generated again (up to 2 times) while it fails\n"
        "12\n13\n"
    )


def test_no_retries_means_a_single_attempt() -> None:
    with pytest.raises(SglError) as caught:
        run_program('gen n(regex="[0-9]")\n', like_an_api("a"), num_retries=0)
    assert caught.value.render().startswith(
        't.sgl:1:1: constraint error: the output "a" does not match the regex "[0-9]" '
        "(after 1 attempt; backend `test` does not enforce `regex`)"
    )


# ---------------------------------------------------------------- images and tools


IMAGE_PROGRAM = """\
print("started")
user:
    "What is this? "
    image "cat.png"
user image "dog.png"
assistant gen answer(max_tokens=5)
"""


def test_a_backend_that_cannot_see_images_refuses_them_at_check_time(tmp_path: Path) -> None:
    program = write(tmp_path / "img.sgl", IMAGE_PROGRAM)
    errors = [error.render() for error in runner.check_files([program], "local")]
    assert errors == [
        f"{program}:4:5: backend error: backend `local` cannot see images\n"
        '        image "cat.png"\n        ^^^^^^^^^^^^^^^',
        f"{program}:5:6: backend error: backend `local` cannot see images\n"
        '    user image "dog.png"\n         ^^^^^^^^^^^^^^^',
    ]
    assert runner.check_files([program], "test") == []


def test_run_refuses_images_even_with_allow_unenforced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = write(tmp_path / "img.sgl", IMAGE_PROGRAM)
    blind = like_an_api("A cat.")
    code, out, err = run_cli(monkeypatch, blind, "--allow-unenforced", str(program))
    assert (code, out, blind.requests) == (1, "", [])
    assert err.startswith(f"{program}:4:5: backend error: backend `test` cannot see images")


def test_the_capability_table_of_the_docs_says_what_each_backend_declares() -> None:
    declared = {
        "`local`": local.LocalBackend().capabilities,
        "`http:": http.HttpBackend("http://127.0.0.1:9").capabilities,
        "`openai:": openai.CAPABILITIES,
        "`anthropic:": anthropic.CAPABILITIES,
        "`gemini:": gemini.CAPABILITIES,
        "`test`": TestBackend().capabilities,
    }
    rows = [line.split(" | ") for line in (ROOT / "docs" / "backends.md").read_text().splitlines()]
    table = {row[0].removeprefix("| "): row for row in rows if len(row) == 9}
    for start, capabilities in declared.items():
        [row] = [row for uri, row in table.items() if uri.startswith(start)]
        images, tools, logprobs = row[4], row[5], row[6]
        assert images.startswith("yes") == capabilities.images, start
        assert tools.startswith("yes") == capabilities.tools, start
        assert logprobs.startswith("yes") == ("logprobs" in capabilities.gen_options), start
        assert ("grammar" in row[2]) == ("grammar" in capabilities.constraints), start
