"""The REPL: `ReplSession` in-process on the test backend, then `sgl repl` on a terminal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sgl_lang import repl as sgl_repl
from sgl_lang.backends.local import LocalBackend
from sgl_lang.backends.test import TestBackend
from sgl_lang.cli import main
from sgl_lang.config import RunConfig
from sgl_lang.errors import SglValueError
from sgl_lang.protocol import GenRequest, GenResult
from sgl_lang.repl import ReplSession
from sgl_lang.stdlib.permissions import Permissions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def session() -> Iterator[ReplSession]:
    repl = ReplSession("test")
    yield repl
    repl.close()


def test_values_echo_strings_append_and_state_shows_roles(session: ReplSession) -> None:
    assert session.feed("x = 20") == ""
    assert session.feed("x + 1") == "21\n"
    assert session.feed('"Hello {x}\\n"') == ""
    assert session.feed("print('printed')") == "printed\n"
    assert session.feed('system "Be brief."') == ""
    assert session.feed('user "Why?"') == ""
    generated = session.feed("assistant gen answer(max_tokens=5)")
    assert generated.strip() and generated.endswith("\n")
    assert session.feed("answer") == f'"{generated.strip()}"\n'
    assert session.feed(":state") == (
        f"Hello 20\n[system] Be brief.\n[user] Why?\n[assistant] {generated.strip()}\n"
    )


def test_definitions_persist_across_inputs(session: ReplSession) -> None:
    session.feed('def greet(name):\n    "Hi {name}. "\n    return len(name)\n')
    session.feed("schema Pet:\n    kind: str\n")
    session.feed("import re")
    assert session.feed('greet("Ada")') == "3\n"
    assert session.feed('re.match(r"a+", "aab").text') == '"aa"\n'
    assert session.feed("Pet.json_schema()['required']") == '["kind"]\n'
    assert session.feed(":state") == "Hi Ada. \n"


def test_multi_line_input_goes_on_until_it_parses_and_a_block_ends(
    session: ReplSession,
) -> None:
    assert session.is_complete('user "hi"')
    assert not session.is_complete("tips = fork i in [1, 2]:")
    block = 'tips = fork i in [1, 2]:\n    "Tip {i}: "\n    gen tip(max_tokens=3)'
    assert not session.is_complete(block)
    assert session.is_complete(block + "\n")
    assert not session.is_complete("xs = [1,\n")
    assert not session.is_complete('text = """first\n\n')
    assert session.is_complete('text = """first\n\nlast"""')
    assert session.feed(block + "\n") == ""  # branch text is not streamed
    assert session.feed("[t.i for t in tips]") == "[1, 2]\n"
    assert session.feed("tips[0].text.startswith('Tip 1: ')") == "true\n"
    assert session.feed(":state") == "(the prompt is empty)\n"  # fork leaves the parent as is


def test_errors_are_shown_with_carets_and_the_session_goes_on(session: ReplSession) -> None:
    session.feed("answer = 1")
    assert session.feed("print(anser)") == (
        "<repl>:1:7: name error: `anser` is not defined\n"
        "    print(anser)\n"
        "          ^^^^^\n"
        "hint: did you mean `answer`?\n"
    )
    assert session.feed("1 +").startswith("<repl>:1:4: syntax error: expected an expression")
    runtime = session.feed('"before "\nx = [1][5]')
    assert runtime.startswith("<repl>:2:9: value error:")
    assert session.feed("answer + 1") == "2\n"
    assert session.feed(":state") == "before \n"  # what ran before the error stays


def test_commands_vars_reset_backend_and_unknown(session: ReplSession) -> None:
    session.feed("x = [1, 2]")
    session.feed('def f():\n    return "s"\n')
    assert session.feed(":vars") == "x = [1, 2]\nf = <function f>\n"
    assert session.feed(":backend nope").startswith("backend error: unknown backend `nope`")
    assert session.feed(":backend test") == "backend: test\n"
    assert session.feed("x") == "[1, 2]\n"  # switching the backend keeps the variables
    assert session.feed(":reset") == "the state and all variables are cleared\n"
    assert session.feed(":vars") == "(no variables)\n"
    assert session.feed(":frobnicate") == "unknown command `:frobnicate` (try :help)\n"
    assert ":state" in session.feed(":help")
    session.feed(":quit")
    assert session.done


def test_save_writes_a_program_that_sgl_runs_and_load_runs_a_file(
    session: ReplSession, tmp_path: Path
) -> None:
    session.feed("n = 2")
    session.feed("print(nope)")  # failed inputs are not saved
    session.feed("def twice(s):\n    return s + s\n")
    session.feed('print(twice("ab"), n)')
    saved = tmp_path / "session.sgl"
    assert session.feed(f":save {saved}") == f"saved 3 input(s) to {saved}\n"
    run = subprocess.run(
        [sys.executable, "-m", "sgl_lang.cli", "run", str(saved)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (run.returncode, run.stdout) == (0, "abab 2\n"), run.stderr
    fresh = ReplSession("test")
    try:
        assert fresh.feed(f":load {saved}") == "abab 2\n"
        assert fresh.feed('twice("c")') == '"cc"\n'
    finally:
        fresh.close()


def test_completion_offers_session_names_gen_arguments_and_members(session: ReplSession) -> None:
    session.feed("import re")
    session.feed("answer_count = 3")

    def words(text: str) -> list[str]:
        return [item.word for item in session.completions(text)]

    assert words("answer_c") == ["answer_count"]
    assert words("gen x(max_tokens=3, te") == ["temperature"]
    assert words("select y(") == ["method"]
    assert words("re.fu") == ["fullmatch"]
    assert words("fo") == ["for", "fork"]


def test_set_values_are_taken_by_param_statements_typed_or_loaded(tmp_path: Path) -> None:
    program = tmp_path / "ask.sgl"
    program.write_text('param topic = "tea"\nprint("about", topic)\n')
    session = ReplSession("test", params={"topic": "rivers", "n": 2})
    try:
        assert session.feed('param n = 5\nparam other = "default"') == ""
        assert session.feed("[n, other]") == '[2, "default"]\n'
        assert session.feed(f":load {program}") == "about rivers\n"
        assert session.feed("param needed") == (
            "<repl>:1:1: value error: param `needed` has no default and no value was given\n"
            "    param needed\n"
            "    ^^^^^^^^^^^^\n"
            "hint: pass one with --set needed=VALUE\n"
        )
        session.feed(":reset")
        assert session.feed("param topic\ntopic") == '"rivers"\n'  # the values outlive :reset
    finally:
        session.close()


def test_the_stdlib_needs_the_permissions_granted_to_the_session(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    read_note = f'import files\nfiles.read("{note}")'
    denied = ReplSession("test")
    allowed = ReplSession("test", granted=Permissions(read=True))
    try:
        assert "permission error: reading files needs --allow-read" in denied.feed(read_note)
        assert allowed.feed(read_note) == '"hello"\n'
        assert "needs --allow-write" in allowed.feed(f'files.write("{note}", "x")')
        assert allowed.feed(":backend test\n") == "backend: test\n"
        assert allowed.feed(f'files.read("{note}")') == '"hello"\n'  # kept across backends
    finally:
        denied.close()
        allowed.close()


def test_runtime_options_set_max_tokens_and_every_local_backend(session: ReplSession) -> None:
    configured = ReplSession("test", config=RunConfig(max_tokens=3, kv_cache_gb=0.25, threads=1))
    try:
        configured.feed("gen a")
        configured.feed("gen b(max_tokens=5)")
        backend = configured.interpreter.backend
        assert isinstance(backend, TestBackend)
        assert [r.max_tokens for r in backend.requests] == [3, 5]
        configured.feed(":backend local")  # the engine is built lazily: nothing loads here
        local = configured.interpreter.backend
        assert isinstance(local, LocalBackend)
        assert (local.options.kv_cache_gb, local.options.num_threads) == (0.25, 1)
    finally:
        configured.close()
    session.feed("gen c")
    assert isinstance(session.interpreter.backend, TestBackend)
    assert session.interpreter.backend.requests[-1].max_tokens == 256  # `gen`'s default


def test_session_config_reads_sgl_toml_in_the_working_folder_under_the_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    assert sgl_repl.session_config(None, {}) == RunConfig()
    (tmp_path / "sgl.toml").write_text("max_tokens = 7\npolicy = 'fcfs'\n")
    assert sgl_repl.session_config(None, {"max_tokens": None}).max_tokens == 7
    assert sgl_repl.session_config(None, {"max_tokens": 2}) == RunConfig(
        max_tokens=2, policy="fcfs"
    )
    other = tmp_path / "other.toml"
    other.write_text("max_tokens = 9\n")
    assert sgl_repl.session_config(other, {}) == RunConfig(max_tokens=9)
    (tmp_path / "sgl.toml").write_text("max_token = 7\n")
    with pytest.raises(SglValueError, match="unknown config key `max_token`"):
        sgl_repl.session_config(None, {})


def test_sgl_repl_takes_the_options_of_sgl_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: dict[str, object] = {}

    def fake_run(backend_uri: str, **options: object) -> None:
        received.update(options, backend_uri=backend_uri)

    monkeypatch.setattr(sgl_repl, "run", fake_run)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sgl.toml").write_text("max_tokens = 7\nthreads = 3\n")
    args = ["repl", "--backend", "test", "--set", "n=2", "--set", "who=Ada", "--max-tokens", "4"]
    result = CliRunner().invoke(main, [*args, "--allow-read", "--allow-python"])
    assert result.exit_code == 0, result.output
    assert received == {
        "backend_uri": "test",
        "params": {"n": 2, "who": "Ada"},
        "granted": Permissions(read=True, python=True),
        "config": RunConfig(max_tokens=4, threads=3),
    }
    bad = CliRunner().invoke(main, ["repl", "--set", "1x=2"])
    assert bad.exit_code == 2 and "expected NAME=VALUE" in bad.output
    (tmp_path / "sgl.toml").write_text("threads = 0\n")
    broken = CliRunner().invoke(main, ["repl"])
    assert broken.exit_code == 1
    assert "sgl.toml:1:1: value error: `threads` must be a positive integer" in broken.output


class _InterruptingBackend(TestBackend):
    """Streams a little, then 'the user presses Ctrl-C' and the reply never ends."""

    async def generate(
        self, request: GenRequest, on_chunk: Callable[[str], None] | None = None
    ) -> GenResult:
        if on_chunk:
            on_chunk("thinking")
        signal.raise_signal(signal.SIGINT)
        await asyncio.sleep(3600)
        raise AssertionError("the generation was not cancelled")


def test_ctrl_c_cancels_the_generation_not_the_session(session: ReplSession) -> None:
    session.feed('"kept "')
    session.interpreter.backend = _InterruptingBackend()
    assert session.feed("gen slow(max_tokens=5)") == "thinking\ninterrupted\n"
    session.interpreter.backend = TestBackend()
    assert session.feed("1 + 1") == "2\n"
    assert session.feed(":state") == "kept \n"


# ---------------------------------------------------------------- on a terminal

SLOW_BACKEND = """
import asyncio
from sgl_lang.backends.test import TestBackend

class Slow(TestBackend):
    async def generate(self, request, on_chunk=None):
        if on_chunk:
            on_chunk("thinking...")
        await asyncio.sleep(3600)

def create(target):
    return Slow()
"""
ECHOED_TWO = r"\n(?:\x1b\[[0-9;?]*[A-Za-z])*2\r\n"  # a line holding `2`, maybe after escapes
LAUNCH = (
    "import sys; from sgl_lang.backends import BACKENDS; "
    "BACKENDS['slow'] = 'slow_backend:create'; from sgl_lang.cli import main; main()"
)


def spawn_repl(tmp_path: Path, *args: str) -> object:
    """`sgl repl ARGS` on a pseudo-terminal in `tmp_path`, at its first prompt."""
    pexpect = pytest.importorskip("pexpect")
    (tmp_path / "slow_backend.py").write_text(SLOW_BACKEND)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TERM": "xterm",
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    child = pexpect.spawn(
        sys.executable,
        ["-c", LAUNCH, "repl", *args],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=15,
        dimensions=(40, 200),
    )
    child.expect_exact(">>>")
    return child


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[object]:
    child = spawn_repl(tmp_path, "--backend", "slow:forever")
    yield child
    child.terminate(force=True)  # type: ignore[attr-defined]
    child.close()  # type: ignore[attr-defined]


def test_a_terminal_session(terminal: object, tmp_path: Path) -> None:
    child = terminal
    # Ctrl-C during a generation cancels it; the REPL stays.
    child.sendline("gen x(max_tokens=5)")  # type: ignore[attr-defined]
    child.expect_exact("thinking...")  # type: ignore[attr-defined]
    child.sendintr()  # type: ignore[attr-defined]
    child.expect_exact("interrupted")  # type: ignore[attr-defined]
    child.expect_exact(">>>")  # type: ignore[attr-defined]
    child.sendline(":backend test")  # type: ignore[attr-defined]
    child.expect_exact("backend: test")  # type: ignore[attr-defined]
    # A multi-line fork block: Enter continues it (indented), an empty line ends it.
    child.sendline('user "Two tips, please."')  # type: ignore[attr-defined]
    child.expect_exact(">>>")  # type: ignore[attr-defined]
    child.sendline("tips = fork i in [1, 2]:")  # type: ignore[attr-defined]
    child.expect_exact("...")  # type: ignore[attr-defined]
    child.sendline('"Tip {i}: "')  # type: ignore[attr-defined]
    child.sendline("gen tip(max_tokens=3)")  # type: ignore[attr-defined]
    child.sendline("")  # type: ignore[attr-defined]
    child.expect_exact(">>>")  # type: ignore[attr-defined]
    child.sendline("len(tips)")  # type: ignore[attr-defined]
    child.expect(ECHOED_TWO)  # type: ignore[attr-defined]
    # An error, and recovery.
    child.sendline("print(tipz)")  # type: ignore[attr-defined]
    child.expect_exact("<repl>:1:7: name error: `tipz` is not defined")  # type: ignore[attr-defined]
    child.expect_exact("hint: did you mean `tips`?")  # type: ignore[attr-defined]
    child.sendline("print(tips[1].i)")  # type: ignore[attr-defined]
    child.expect(ECHOED_TWO)  # type: ignore[attr-defined]
    child.sendline(":state")  # type: ignore[attr-defined]
    child.expect_exact("[user]")  # type: ignore[attr-defined]
    child.expect_exact("Two tips, please.")  # type: ignore[attr-defined]
    child.sendline(":quit")  # type: ignore[attr-defined]
    child.expect(pexpect_eof())  # type: ignore[attr-defined]
    assert (tmp_path / "data" / "sgl-lang" / "repl_history").is_file()


def pexpect_eof() -> object:
    import pexpect

    return pexpect.EOF


def test_a_terminal_session_with_params_permissions_and_config(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("from a file")
    (tmp_path / "sgl.toml").write_text("max_tokens = 2\n")
    child = spawn_repl(tmp_path, "--backend", "test", "--set", "who=Ada", "--allow-read")
    try:
        child.sendline('param who = "nobody"')  # type: ignore[attr-defined]
        child.expect_exact(">>>")  # type: ignore[attr-defined]
        child.sendline('print("hi", who)')  # type: ignore[attr-defined]
        child.expect_exact("hi Ada")  # type: ignore[attr-defined]
        child.sendline("import files")  # type: ignore[attr-defined]
        child.expect_exact(">>>")  # type: ignore[attr-defined]
        child.sendline('print(files.read("note.txt"))')  # type: ignore[attr-defined]
        child.expect_exact("from a file")  # type: ignore[attr-defined]
        child.sendline("gen x")  # type: ignore[attr-defined]
        child.expect_exact(">>>")  # type: ignore[attr-defined]
        child.sendline('print(meta(x)["completion_tokens"], meta(x)["finish_reason"])')  # type: ignore[attr-defined]
        child.expect_exact("2 length")  # type: ignore[attr-defined]
        child.sendline(":quit")  # type: ignore[attr-defined]
        child.expect(pexpect_eof())  # type: ignore[attr-defined]
    finally:
        child.terminate(force=True)  # type: ignore[attr-defined]
