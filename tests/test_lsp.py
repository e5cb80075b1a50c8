"""`sgl lsp` over stdio, as an editor drives it: JSON-RPC messages on the server's pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from sgl_lang.lsp.analysis import MAX_IMPORT_BYTES
from sgl_lang.runner import check_files

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 30


class LspClient:
    """A minimal LSP client: requests wait for their response, notifications are queued."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sgl_lang.cli", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.next_id = 0
        self.messages: Queue[dict[str, Any]] = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            headers: dict[str, str] = {}
            while (line := stream.readline().decode("ascii")) not in ("\r\n", ""):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if not headers:
                return
            body = stream.read(int(headers["content-length"]))
            self.messages.put(json.loads(body))

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT_S)
        self.process.stdout.close()

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params})
        while True:
            message = self.messages.get(timeout=TIMEOUT_S)
            if message.get("id") == self.next_id and "method" not in message:
                assert "error" not in message, message
                return message.get("result")

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def diagnostics(self, uri: str) -> list[dict[str, Any]]:
        """The next diagnostics published for `uri`."""
        while True:
            try:
                message = self.messages.get(timeout=TIMEOUT_S)
            except Empty:
                raise AssertionError("no diagnostics were published") from None
            if (
                message.get("method") == "textDocument/publishDiagnostics"
                and message["params"]["uri"] == uri
            ):
                diagnostics: list[dict[str, Any]] = message["params"]["diagnostics"]
                return diagnostics

    def open(self, path: Path, text: str) -> list[dict[str, Any]]:
        uri = path.as_uri()
        item = {"uri": uri, "languageId": "sgl", "version": 1, "text": text}
        self.notify("textDocument/didOpen", {"textDocument": item})
        return self.diagnostics(uri)

    def at(self, path: Path, line: int, character: int) -> dict[str, Any]:
        return {
            "textDocument": {"uri": path.as_uri()},
            "position": {"line": line, "character": character},
        }


@pytest.fixture(scope="module")
def client() -> Iterator[LspClient]:
    lsp = LspClient()
    result = lsp.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    capabilities = result["capabilities"]
    for feature in ("hoverProvider", "definitionProvider", "documentSymbolProvider"):
        assert capabilities[feature], feature
    assert "." in capabilities["completionProvider"]["triggerCharacters"]
    lsp.notify("initialized", {})
    yield lsp
    lsp.request("shutdown", None)
    lsp.notify("exit", None)
    lsp.close()


PROGRAM = """\
import "lib/helpers.sgl" as helpers
import re
schema City:
    name: str
    size: "small" | "large"

param topic = "cities"

# Ask one question and return the first line of the answer.
def ask(question, shots=""):
    "{shots}Q: {question}\\nA:"
    gen answer(max_tokens=16, stop="\\n")
    return answer.strip()

user "Describe a city about {topic}."
assistant gen city(json=City, max_tokens=64)
print(ask("Where?"), helpers.shout("x"), re.sub("a", "b", "c"))
"""
LIB = """\
# Upper-case a text.
def shout(text):
    return text.upper()
"""


@pytest.fixture
def program(tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helpers.sgl").write_text(LIB)
    path = tmp_path / "main.sgl"
    path.write_text(PROGRAM)
    return path


def position(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return line, index - (text.rfind("\n", 0, index) + 1)


def test_diagnostics_are_those_of_sgl_check(client: LspClient, tmp_path: Path) -> None:
    path = tmp_path / "broken.sgl"
    text = "answer = 1\nprint(anser)\ngen x(temprature=0)\nreturn 2\nanswer\n"
    path.write_text(text)
    diagnostics = client.open(path, text)
    expected = check_files([path])
    assert [d["message"] for d in diagnostics] == [
        p.message + (f"\nhint: {p.hint}" if p.hint else "") for p in expected
    ]
    assert [d["code"] for d in diagnostics] == [
        "name error",
        "type error",
        "syntax error",
        "warning",
    ]
    assert [d["severity"] for d in diagnostics] == [1, 1, 1, 2]  # errors, then a warning
    assert diagnostics[0]["range"] == {
        "start": {"line": 1, "character": 6},
        "end": {"line": 1, "character": 11},
    }
    for diagnostic, problem in zip(diagnostics, expected, strict=True):
        assert problem.span is not None
        start = diagnostic["range"]["start"]
        assert (start["line"] + 1, start["character"] + 1) == (
            problem.span.line,
            problem.span.column,
        )


def test_diagnostics_follow_changes_and_report_syntax_errors(
    client: LspClient, tmp_path: Path
) -> None:
    path = tmp_path / "edit.sgl"
    assert client.open(path, "x = 1\nprint(x)\n") == []
    change = {"textDocument": {"uri": path.as_uri(), "version": 2}, "contentChanges": []}
    change["contentChanges"] = [{"text": "fork i in [1, 2]:\ngen y\n"}]
    client.notify("textDocument/didChange", change)
    (diagnostic,) = client.diagnostics(path.as_uri())
    assert diagnostic["message"] == "expected an indented block after `fork …:`"
    assert diagnostic["code"] == "syntax error"
    assert diagnostic["range"]["start"] == {"line": 1, "character": 0}


def test_hover_shows_docs_of_defs_builtins_gen_arguments_and_schemas(
    client: LspClient, program: Path
) -> None:
    assert client.open(program, PROGRAM) == []

    def hover(needle: str, offset: int = 0) -> str:
        result = client.request(
            "textDocument/hover", client.at(program, *position(PROGRAM, needle, offset))
        )
        assert result is not None, needle
        value: str = result["contents"]["value"]
        return value

    assert hover('ask("Where') == (
        '```sgl\ndef ask(question, shots="")\n```\n\n'
        "Ask one question and return the first line of the answer."
    )
    assert "at most this many tokens" in hover("max_tokens=16")
    assert "valid for a `schema`" in hover("json=City")
    assert 'size: "small" | "large"' in hover("City, max")
    assert hover("print(").startswith("```sgl\nprint(")
    assert hover("re.sub", 3).startswith("```sgl\nsub(pattern, repl, text")
    assert "Upper-case a text." in hover("shout(")
    assert "(parameter)" in hover("question}")
    assert "gen NAME(args)" in hover("gen answer")


def test_go_to_definition_for_functions_schemas_params_and_imports(
    client: LspClient, program: Path
) -> None:
    client.open(program, PROGRAM)

    def definition(needle: str, offset: int = 0) -> tuple[str, int, int]:
        params = client.at(program, *position(PROGRAM, needle, offset))
        result = client.request("textDocument/definition", params)
        start = result["range"]["start"]
        return result["uri"], start["line"], start["character"]

    uri = program.as_uri()
    assert definition('ask("Where') == (uri, 9, 4)
    assert definition("City, max") == (uri, 2, 7)
    assert definition("topic}.") == (uri, 6, 6)
    assert definition("question}") == (uri, 9, 8)
    assert definition("answer.strip") == (uri, 11, 8)
    lib = (program.parent / "lib" / "helpers.sgl").as_uri()
    assert definition("helpers.shout", 9) == (lib, 1, 4)
    assert definition('"lib/helpers') == (lib, 0, 0)
    assert definition("helpers.shout") == (uri, 0, 28)


def test_completion_offers_gen_arguments_names_and_module_members(
    client: LspClient, tmp_path: Path
) -> None:
    path = tmp_path / "complete.sgl"
    text = "import re\ncount = 1\ngen x(max_tokens=2, st\nre.fi\nco"
    client.open(path, text)

    def labels(line: int, character: int) -> list[str]:
        result = client.request("textDocument/completion", client.at(path, line, character))
        return [item["label"] for item in result["items"]]

    assert labels(2, 22) == ["stop", "stop_regex"]
    assert labels(2, 6)[:3] == ["choices", "frequency_penalty", "grammar"]
    assert labels(3, 5) == ["findall"]
    assert labels(4, 2) == ["count", "continue"]


def test_document_symbols_list_defs_schemas_params_and_imports(
    client: LspClient, program: Path
) -> None:
    client.open(program, PROGRAM)
    result = client.request(
        "textDocument/documentSymbol", {"textDocument": {"uri": program.as_uri()}}
    )
    outline = [(s["name"], s["detail"], [c["name"] for c in s.get("children", [])]) for s in result]
    assert outline == [
        ("helpers", "import", []),
        ("re", "import", []),
        ("City", "schema", ["name", "size"]),
        ("topic", "param", []),
        ("ask", "function", ["question", "shots"]),
        ("city", "generated", []),
    ]
    ask = next(s for s in result if s["name"] == "ask")
    assert ask["selectionRange"]["start"] == {"line": 9, "character": 4}
    assert ask["range"]["end"]["line"] == 12


def test_deep_nesting_gives_diagnostics_not_a_crash(client: LspClient, tmp_path: Path) -> None:
    path = tmp_path / "deep.sgl"
    assert client.open(path, "x = " + "+".join(["1"] * 1000) + "\nprint(x)\n") == []
    change = {"textDocument": {"uri": path.as_uri(), "version": 2}, "contentChanges": []}
    change["contentChanges"] = [{"text": "x = " + "[" * 500 + "]" * 500 + "\n"}]
    client.notify("textDocument/didChange", change)
    (diagnostic,) = client.diagnostics(path.as_uri())
    assert diagnostic["message"] == "too many nested brackets (more than 200)"
    assert diagnostic["range"]["start"] == {"line": 0, "character": 204}


def test_imports_of_large_files_are_diagnostics_and_not_read(
    client: LspClient, tmp_path: Path
) -> None:
    big = tmp_path / "big.sgl"
    big.write_text("x = 1\n" * (MAX_IMPORT_BYTES // 6 + 1))
    path = tmp_path / "main.sgl"
    text = 'import "big.sgl" as big\nprint(big.x)\n'
    (diagnostic,) = client.open(path, text)
    assert diagnostic["message"] == f"cannot read `{big}`: larger than {MAX_IMPORT_BYTES} bytes"
    assert diagnostic["range"]["start"] == {"line": 0, "character": 0}
    result = client.request("textDocument/completion", client.at(path, 1, 10))
    assert result["items"] == []


def test_imports_of_fifos_and_devices_are_never_read(client: LspClient, tmp_path: Path) -> None:
    """Reading a FIFO without a writer would block the server forever; /dev/zero never ends."""
    os.mkfifo(tmp_path / "fifo.sgl")
    path = tmp_path / "main.sgl"
    text = 'import "fifo.sgl" as f\nimport "/dev/zero" as z\nprint(f.x, z.x)\n'
    problems = client.open(path, text)
    assert [problem["range"]["start"]["line"] for problem in problems] == [0, 1]
    for character in (8, 13):
        result = client.request("textDocument/completion", client.at(path, 2, character))
        assert result["items"] == []
