"""The Pygments lexer: registered as a plugin, and agreeing with the grammar's tokens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, String, Token

from sgl_lang.highlight import SglLexer
from sgl_lang.transform import KEYWORDS

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted([*ROOT.glob("examples/*.sgl"), *ROOT.glob("tests/programs/**/*.sgl")])


def tokens(code: str) -> list[tuple[object, str]]:
    return [(kind, text) for kind, text in SglLexer().get_tokens(code) if text.strip()]


def kind_of(code: str, text: str) -> object:
    return next(kind for kind, value in tokens(code) if value == text)


def test_the_lexer_is_a_pygments_plugin() -> None:
    assert isinstance(get_lexer_by_name("sgl"), SglLexer)
    assert isinstance(get_lexer_for_filename("hello.sgl"), SglLexer)


def test_every_keyword_of_the_grammar_is_highlighted() -> None:
    grammar = (ROOT / "grammar" / "sgl.lark").read_text()
    literals = set(re.findall(r'"([a-z]+)"', grammar))
    assert literals <= KEYWORDS
    for keyword in sorted(KEYWORDS):
        kind = kind_of(f"{keyword} x", keyword)
        assert kind in Keyword or kind in Operator.Word, (keyword, kind)


def test_constructs_get_their_token_kinds() -> None:
    code = (
        "# note\n"
        "def ask(q):\n"
        '    "Q: {q:>5} {{x}}\\n"\n'
        'assistant gen answer(max_tokens=16, stop=["\\n"])\n'
        "schema City:\n"
        "    size: int\n"
        'p = r"\\d+{2}"\n'
        "x = 1.5e3 if answer not in range(3) else none\n"
    )
    assert kind_of(code, "# note") in Comment
    assert kind_of(code, "ask") in Name.Function
    assert kind_of(code, "City") in Name.Class
    assert kind_of(code, "assistant") in Keyword.Pseudo
    assert kind_of(code, "answer") in Name.Variable.Magic
    assert kind_of(code, "max_tokens") in Name.Attribute
    assert kind_of(code, ":>5") in String.Interpol
    assert kind_of(code, "{{") in String.Escape
    assert kind_of(code, "\\d+{2}") in String and kind_of(code, "\\d+{2}") not in String.Interpol
    assert kind_of(code, "1.5e3") in Number.Float
    assert kind_of(code, "not in") in Operator.Word
    assert kind_of(code, "range") in Name.Builtin
    assert kind_of(code, "none") in Keyword.Constant


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: p.name)
def test_examples_and_fixtures_lex_without_errors(path: Path) -> None:
    text = path.read_text()
    lexed = list(SglLexer().get_tokens(text + "\nlast = 1\n"))
    assert not [value for kind, value in lexed if kind in Error]
    last = [kind for kind, value in lexed if value == "last"]
    assert last == [Token.Name], "a string or block stays open to the end"
