"""The REPL: one persistent program state across inputs (`ReplSession`) and its terminal (`run`).

`ReplSession` holds no terminal: `feed(text)` runs one input and returns what it printed, so
the whole REPL is testable in-process. `run()` wraps it in prompt_toolkit (multi-line input,
history, highlighting, completion). Generation runs on one `asyncio.Runner`, whose SIGINT
handler cancels the running input on Ctrl-C; the session and its state survive.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from sgl_lang import nodes
from sgl_lang.config import RunConfig, resolve_config
from sgl_lang.errors import SglError, SglNameError, SglWarning
from sgl_lang.grammar import parse
from sgl_lang.interpreter import Interpreter
from sgl_lang.loader import Loader, read_source
from sgl_lang.lsp.vocabulary import Completion, complete
from sgl_lang.objects import DICT_METHODS, LIST_METHODS, STR_METHODS, Record, Schema
from sgl_lang.protocol import Backend
from sgl_lang.resolve import check
from sgl_lang.runner import make_backend, new_interpreter
from sgl_lang.scopes import Context
from sgl_lang.source import Source
from sgl_lang.state import State
from sgl_lang.stdlib import BUILTIN_NAMES, builtins, permissions
from sgl_lang.stdlib.modules import Module
from sgl_lang.values import to_repr

REPL_NAME = "<repl>"
PROMPT, CONTINUATION = ">>> ", "... "
MAX_SHOWN_VALUE_LEN = 200

HELP = """\
Type statements as in a .sgl file; they run on one persistent state.
  "text"              append text to the prompt (nothing is printed)
  user "..." / user:  a chat message (end a block with an empty line)
  gen x(...)          generate; the text streams as it arrives and is bound to x
  an expression       is evaluated and its value printed (none is not printed)
Commands:
  :state          the prompt so far, with roles (generated text highlighted)
  :vars           the variables of the session
  :reset          forget the state and every variable
  :backend URI    switch the backend, keeping the state (e.g. :backend test)
  :load FILE      run a .sgl file in this session
  :save FILE      write the session's successful inputs as a .sgl program
  :help           this text
  :quit           leave (also Ctrl-D)
Ctrl-C cancels a running generation; the session goes on."""

_GREEN, _CYAN, _RED, _RESET = "\x1b[32m", "\x1b[36m", "\x1b[31m", "\x1b[0m"
_BLOCKS = (nodes.If, nodes.For, nodes.While, nodes.FuncDef, nodes.SchemaDecl, nodes.Fork)


class ReplSession:
    """An interactive session: one interpreter, one main state, the inputs that succeeded.

    As in `sgl run`: `params` are the values of `param` statements (`--set`), `granted` the
    permissions of the stdlib modules (`--allow-*`), `config` the runtime options (`sgl.toml`,
    `--max-tokens`, ...; engine options apply to every `local` backend the session uses).
    `out` receives everything the session prints (values, streamed text, `print`, errors);
    `color` adds ANSI colours for a terminal.
    """

    def __init__(
        self,
        backend_uri: str = "local",
        *,
        params: dict[str, Any] | None = None,
        granted: permissions.Permissions | None = None,
        config: RunConfig | None = None,
        out: TextIO | None = None,
        color: bool = False,
    ):
        self.out: TextIO = out or sys.stdout
        self.color = color
        self.backend_uri = backend_uri
        self.params = dict(params or {})
        self.granted = granted or permissions.Permissions()
        self.config = config or RunConfig()
        self.done = False
        self.log: list[str] = []  # inputs that ran without error, for `:save`
        self._runner = asyncio.Runner()
        self._loader = Loader()
        self._streamed = False
        self._streamed_newline = True
        self.interpreter, self.state = self._fresh(make_backend(backend_uri, self.config))

    def _fresh(self, backend: Backend) -> tuple[Interpreter, State]:
        interpreter = new_interpreter(
            backend,
            self.config,
            self._loader,
            self.params,
            on_chunk=self._on_chunk,
            on_warning=lambda message: self._write(f"warning: {message}\n"),
        )
        state = State()
        interpreter.states.append(state)
        return interpreter, state

    def close(self) -> None:
        """Release the backend and the event loop."""
        try:
            self._runner.run(self.interpreter.backend.close())
        finally:
            self._runner.close()

    # ------------------------------------------------------------ input

    def feed(self, text: str) -> str:
        """Run one input (statements or a `:command`) and return what it printed."""
        buffer = io.StringIO()
        with self._redirect(buffer):
            self.handle(text)
        return buffer.getvalue()

    def handle(self, text: str) -> None:
        """Run one input, printing to `out`. Errors are printed; only Ctrl-C outside a
        generation (KeyboardInterrupt from the caller) escapes."""
        if text.strip().startswith(":"):
            self._command(text.strip())
        elif text.strip():
            self._run_source(Source(REPL_NAME, text.rstrip() + "\n"), log=True)

    def is_complete(self, text: str) -> bool:
        """Whether `text` is a whole input, or the user is still typing a multi-line one.

        An input goes on while a bracket or a triple-quoted string is open, and while a block
        is open or may go on (after a block statement) until an empty line.
        """
        stripped = text.strip()
        if not stripped or stripped.startswith(":"):
            return True
        lines = text.split("\n")
        ends_blank = len(lines) > 1 and not lines[-1].strip()
        try:
            program = parse(Source(REPL_NAME, text))
        except SglError as error:
            if _is_open(error, text):
                return False  # an empty line inside brackets or a triple-quoted string is content
            return ends_blank or not error.message.startswith("expected an indented block")
        if ends_blank or not program.body:
            return True
        return not (_opens_block(program.body[-1]) or lines[-1].startswith((" ", "\t")))

    def completions(self, text_before_cursor: str) -> list[Completion]:
        """Completions at the end of `text_before_cursor`, from the session's live values."""
        line = text_before_cursor.rsplit("\n", 1)[-1]
        return complete(line, self.interpreter.scope.vars, self._attributes)

    def _attributes(self, name: str) -> list[str]:
        value = self.interpreter.scope.vars.get(name)
        if isinstance(value, Module):
            return sorted(value.exports)
        if isinstance(value, Record):
            return sorted(value.attributes)
        if isinstance(value, Schema):
            return sorted(value.sgl_attributes)
        if isinstance(value, dict):
            return sorted({k for k in value if isinstance(k, str)} | DICT_METHODS)
        if isinstance(value, str):
            return sorted(STR_METHODS)
        if isinstance(value, list):
            return sorted(LIST_METHODS)
        return []

    # ------------------------------------------------------------ running

    def _run_source(self, source: Source, *, log: bool) -> bool:
        """Parse, check and run `source` on the session state; True if it ran without error."""
        try:
            program = parse(source)
        except SglError as error:
            self._error(error)
            return False
        problems = self._problems(program)
        for problem in problems:
            self._error(problem)
        if any(not isinstance(problem, SglWarning) for problem in problems):
            return False
        ok = self._execute(program)
        if ok and log:
            self.log.append(source.text.rstrip("\n"))
        return ok

    def _problems(self, program: nodes.Program) -> list[SglError]:
        """`sgl check`'s problems, less those that only say a name is from an earlier input,
        and less "no effect" warnings for top-level expressions (the REPL prints them)."""
        known = set(self.interpreter.scope.vars)
        echoed = {stmt.span.start for stmt in program.body if isinstance(stmt, nodes.ExprStmt)}
        problems = []
        for problem in check(program, self.params):
            span = problem.span
            if isinstance(problem, SglNameError) and span is not None and span.text in known:
                continue
            if isinstance(problem, SglWarning) and span is not None and span.start in echoed:
                continue
            if isinstance(problem, SglNameError) and span is not None:
                close = difflib.get_close_matches(span.text, sorted(known | BUILTIN_NAMES), n=1)
                problem.hint = f"did you mean `{close[0]}`?" if close else problem.hint
            problems.append(problem)
        return problems

    def _execute(self, program: nodes.Program) -> bool:
        self.interpreter.program = program
        try:
            self._runner.run(self._statements(program))
            return True
        except SglError as error:
            self._end_stream()
            self._error(error)
        except (KeyboardInterrupt, asyncio.CancelledError):
            self._end_stream()
            self._write("interrupted\n")
        return False

    async def _statements(self, program: nodes.Program) -> None:
        # In the runner's own context: `print` writes to `out`, the stdlib sees the permissions.
        builtins.output.set(self.out)
        permissions.current.set(self.granted)
        ctx = Context(self.state, self.interpreter.scope)
        for stmt in program.body:
            num_pieces = len(self.state.pieces)
            self._streamed = False
            if isinstance(stmt, nodes.ExprStmt):
                value = await self.interpreter.eval(stmt.expr, ctx)
                if value is not None:
                    self._write(_shorten(to_repr(value)) + "\n")
                continue
            await self.interpreter.exec_block((stmt,), ctx)
            self._show_generated(num_pieces)
            if isinstance(stmt, nodes.BackendDecl) and stmt.uri != self.backend_uri:
                await self._use_backend(stmt.uri)

    def _on_chunk(self, text: str) -> None:
        self._streamed = True
        self._streamed_newline = text.endswith("\n")
        self._write(self._paint(text, _GREEN))
        self.out.flush()

    def _show_generated(self, num_pieces: int) -> None:
        """End streamed text with a line break; print generated text that was not streamed
        (`select`, or a backend that does not stream)."""
        if self._streamed:
            self._end_stream()
            return
        generated = "".join(p.text for p in self.state.pieces[num_pieces:] if p.generated)
        if generated:
            self._write(self._paint(generated, _GREEN) + ("" if generated.endswith("\n") else "\n"))

    def _end_stream(self) -> None:
        if self._streamed and not self._streamed_newline:
            self._write("\n")
        self._streamed = False
        self._streamed_newline = True

    # ------------------------------------------------------------ commands

    def _command(self, text: str) -> None:
        name, _, argument = text[1:].partition(" ")
        argument = argument.strip()
        commands: dict[str, Callable[[str], None]] = {
            "state": lambda _: self._show_state(),
            "vars": lambda _: self._show_vars(),
            "reset": lambda _: self._reset(),
            "backend": self._switch_backend,
            "load": self._load,
            "save": self._save,
            "help": lambda _: self._write(HELP + "\n"),
            "quit": lambda _: self._quit(),
            "q": lambda _: self._quit(),
            "exit": lambda _: self._quit(),
        }
        if name not in commands:
            self._write(f"unknown command `:{name}` (try :help)\n")
            return
        if name in ("backend", "load", "save") and not argument:
            self._write(f"usage: :{name} {'URI' if name == 'backend' else 'FILE'}\n")
            return
        commands[name](argument)

    def _show_state(self) -> None:
        if not self.state.pieces:
            self._write("(the prompt is empty)\n")
            return
        self._write(render_state(self.state, color=self.color) + "\n")

    def _show_vars(self) -> None:
        if not self.interpreter.scope.vars:
            self._write("(no variables)\n")
        for name, value in self.interpreter.scope.vars.items():
            self._write(f"{name} = {_shorten(to_repr(value))}\n")

    def _reset(self) -> None:
        self.interpreter, self.state = self._fresh(self.interpreter.backend)
        self.log.clear()
        self._write("the state and all variables are cleared\n")

    def _switch_backend(self, uri: str) -> None:
        self._runner.run(self._use_backend(uri))

    async def _use_backend(self, uri: str) -> None:
        """Generate with the backend at `uri` from now on; the state and variables stay."""
        try:
            backend = make_backend(uri, self.config)
        except SglError as error:
            self._error(error)
            return
        old, self.interpreter.backend, self.backend_uri = self.interpreter.backend, backend, uri
        await old.close()
        self._write(f"backend: {backend.name}\n")

    def _load(self, argument: str) -> None:
        try:
            source = read_source(Path(argument))
        except SglError as error:
            self._error(error)
            return
        if self._run_source(source, log=False):
            self.log.append(f"# :load {argument}\n{source.text.rstrip()}")

    def _save(self, argument: str) -> None:
        path = Path(argument)
        header = f'# saved by `sgl repl`\nbackend "{self.backend_uri}"\n'
        body = "".join(f"\n{entry}\n" + ("\n" if "\n" in entry else "") for entry in self.log)
        try:
            path.write_text(header + body, encoding="utf-8")
        except OSError as exc:
            self._write(f"cannot write `{path}`: {exc}\n")
            return
        self._write(f"saved {len(self.log)} input(s) to {path}\n")

    def _quit(self) -> None:
        self.done = True

    # ------------------------------------------------------------ output

    def _write(self, text: str) -> None:
        self.out.write(text)

    def _error(self, error: SglError) -> None:
        self._write(self._paint(error.render(), _RED) + "\n")

    def _paint(self, text: str, colour: str) -> str:
        return f"{colour}{text}{_RESET}" if self.color and text else text

    @contextmanager
    def _redirect(self, out: TextIO) -> Iterator[None]:
        previous, self.out = self.out, out
        try:
            yield
        finally:
            self.out = previous


def render_state(state: State, *, color: bool = False) -> str:
    """The prompt so far: each message as `[role] content`, free text as is; generated text
    in green when `color`."""
    parts: list[str] = []
    message: int | None = None
    for piece in state.pieces:
        if piece.message != message:
            if piece.message is not None:
                header = f"[{piece.role}] "
                separator = "\n" if parts and not parts[-1].endswith("\n") else ""
                parts.append(separator + (f"{_CYAN}{header}{_RESET}" if color else header))
            elif parts and not parts[-1].endswith("\n"):
                parts.append("\n")
            message = piece.message
        text = "<image>" if piece.image is not None else piece.text
        parts.append(f"{_GREEN}{text}{_RESET}" if color and piece.generated and text else text)
    return "".join(parts).rstrip("\n")


def _shorten(text: str) -> str:
    if len(text) <= MAX_SHOWN_VALUE_LEN:
        return text
    return text[: MAX_SHOWN_VALUE_LEN - 3] + "..."


def _is_open(error: SglError, text: str) -> bool:
    """Whether a syntax error says a bracket or a triple-quoted string is still open."""
    if error.message.endswith("was never closed"):
        return True
    if error.message != "unterminated string" or error.span is None:
        return False
    opening = text[error.span.start : error.span.start + 4].lstrip("rR")
    return opening.startswith(('"""', "'''"))


def _opens_block(stmt: nodes.Stmt) -> bool:
    if isinstance(stmt, nodes.Role):
        return not stmt.inline
    if isinstance(stmt, nodes.Assign):
        return isinstance(stmt.value, nodes.Fork)
    return isinstance(stmt, _BLOCKS)


# ---------------------------------------------------------------- the terminal


def history_path() -> Path:
    """Where the REPL keeps its input history: the user data dir of `sgl-lang`."""
    import platformdirs

    return Path(platformdirs.user_data_dir("sgl-lang", appauthor=False)) / "repl_history"


def session_config(config_path: Path | None, settings: dict[str, Any]) -> RunConfig:
    """The session's runtime options: `config_path` (`--config`), else an `sgl.toml` in the
    working folder, else the user's; the flags' `settings` (None: not given) on top."""
    return resolve_config(Path.cwd() / REPL_NAME, config_path, settings)


def run(
    backend_uri: str = "local",
    *,
    params: dict[str, Any] | None = None,
    granted: permissions.Permissions | None = None,
    config: RunConfig | None = None,
) -> None:
    """The interactive REPL on the terminal, until `:quit` or Ctrl-D."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    session = ReplSession(
        backend_uri, params=params, granted=granted, config=config, color=sys.stdout.isatty()
    )
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    prompt: PromptSession[str] = PromptSession(
        history=FileHistory(str(path)),
        multiline=True,
        prompt_continuation=lambda width, line_number, soft_wrap: CONTINUATION,
        key_bindings=_key_bindings(session),
        **_decorations(session),
    )
    print(f"sgl repl — backend {session.interpreter.backend.name}; :help for commands")
    try:
        while not session.done:
            try:
                text = prompt.prompt(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            session.handle(text)
    finally:
        session.close()


def _decorations(session: ReplSession) -> dict[str, Any]:
    """Highlighting and completion for prompt_toolkit."""
    from prompt_toolkit.completion import CompleteEvent, Completer
    from prompt_toolkit.completion import Completion as PtCompletion
    from prompt_toolkit.document import Document
    from prompt_toolkit.lexers import PygmentsLexer

    from sgl_lang.highlight import SglLexer

    class SessionCompleter(Completer):
        def get_completions(self, document: Document, complete_event: CompleteEvent) -> Any:
            before = document.text_before_cursor
            prefix = re.search(r"[A-Za-z0-9_]*$", before)
            start = -len(prefix.group(0)) if prefix else 0
            for item in session.completions(before):
                yield PtCompletion(item.word, start_position=start, display_meta=item.kind)

    return {"lexer": PygmentsLexer(SglLexer), "completer": SessionCompleter()}


def _key_bindings(session: ReplSession) -> Any:
    """Enter runs the input when it is complete, else opens a new line, indented."""
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

    bindings = KeyBindings()

    @bindings.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        state = buffer.complete_state
        if state is not None and state.current_completion is not None:
            buffer.apply_completion(state.current_completion)
            return
        text = buffer.document.text
        if buffer.document.is_cursor_at_the_end and session.is_complete(text):
            buffer.validate_and_handle()
            return
        buffer.insert_text("\n" + _indent_after(buffer.document.current_line_before_cursor))

    return bindings


def _indent_after(line: str) -> str:
    """The indentation of the next line: the current one's, one level more after a `:`."""
    indent = line[: len(line) - len(line.lstrip())]
    if not line.strip():
        return ""
    return indent + ("    " if line.rstrip().endswith(":") else "")
