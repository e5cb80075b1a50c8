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

from sgl_lang.backends.base import GenRequest, GenResult
from sgl_lang.backends.test import TestBackend
from sgl_lang.repl import ReplSession

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


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[object]:
    pexpect = pytest.importorskip("pexpect")
    (tmp_path / "slow_backend.py").write_text(SLOW_BACKEND)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "TERM": "xterm",
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    child = pexpect.spawn(
        sys.executable,
        ["-c", LAUNCH, "repl", "--backend", "slow:forever"],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=15,
        dimensions=(40, 200),
    )
    child.expect_exact(">>>")
    yield child
    child.terminate(force=True)
    child.close()


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
