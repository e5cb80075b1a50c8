"""The VS Code extension: its TextMate grammar agrees with `grammar/sgl.lark`, its JSON files
are valid, and (with node and its npm packages) its scope tests pass."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sgl_lang.stdlib import BUILTIN_NAMES

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "editors" / "vscode"
GRAMMAR = EXTENSION / "syntaxes" / "sgl.tmLanguage.json"


def grammar() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GRAMMAR.read_text())
    return data


def regexes(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("match", "begin", "end") and isinstance(value, str):
                yield value
            else:
                yield from regexes(value)
    elif isinstance(node, list):
        for item in node:
            yield from regexes(item)


def test_json_files_are_valid_and_wired_together() -> None:
    manifest = json.loads((EXTENSION / "package.json").read_text())
    (language,) = manifest["contributes"]["languages"]
    assert language["extensions"] == [".sgl"]
    (contributed,) = manifest["contributes"]["grammars"]
    assert contributed["scopeName"] == grammar()["scopeName"] == "source.sgl"
    for relative in (
        language["configuration"],
        contributed["path"],
        manifest["contributes"]["snippets"][0]["path"],
    ):
        json.loads((EXTENSION / relative).read_text())
    configuration = json.loads((EXTENSION / "language-configuration.json").read_text())
    assert configuration["comments"]["lineComment"] == "#"
    assert (EXTENSION / manifest["main"]).is_file()


def test_every_keyword_and_builtin_of_the_language_is_in_the_grammar() -> None:
    lark = (ROOT / "grammar" / "sgl.lark").read_text()
    keywords = set(re.findall(r'"([a-z]+)"', lark))
    assert {"fork", "gen", "select", "assistant", "schema"} <= keywords
    words = set(re.findall(r"[a-z_]+", " ".join(regexes(grammar()))))
    assert keywords - words == set()
    assert BUILTIN_NAMES - words == set()


def test_every_regex_compiles() -> None:
    """Oniguruma's syntax is a superset of what we use; Python's `re` checks it here."""
    patterns = list(regexes(grammar()))
    assert len(patterns) > 30
    for pattern in patterns:
        # `\1` in an `end` refers to the `begin` captures; give it a group to refer to.
        re.compile(f"(){pattern}" if "\\1" in pattern else pattern)


def test_the_grammar_file_is_built_from_its_script(tmp_path: Path) -> None:
    script = EXTENSION / "scripts" / "build_grammar.py"
    before = GRAMMAR.read_text()
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    assert GRAMMAR.read_text() == before, "run scripts/build_grammar.py and commit the JSON"


def _missing_for_node() -> str | None:
    """Why the node tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not on the PATH"
    if not (EXTENSION / "node_modules" / "vscode-textmate").is_dir():
        return "no editors/vscode/node_modules (run `npm ci` there, or `make test`)"
    return None


def test_scopes_in_node_with_vscode_textmate() -> None:
    """Skipped without node or the npm packages, except under CI=true, where that fails
    (`make test` installs them with `npm ci`), so these tests cannot silently stop running."""
    missing = _missing_for_node()
    if missing is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI runs the editor scope tests, but {missing}")
        pytest.skip(missing)
    result = subprocess.run(
        ["node", "--test", "test/"], cwd=EXTENSION, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
