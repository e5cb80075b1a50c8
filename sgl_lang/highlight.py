"""Syntax highlighting: a Pygments lexer for `.sgl` (used by the REPL; a Pygments plugin too).

Registered under the `pygments.lexers` entry point, so `pygmentize -l sgl` and every tool that
uses Pygments (Sphinx, MkDocs, rich) highlight `.sgl` once the package is installed. The token
rules follow `grammar/sgl.lark`; `tests/test_highlight.py` checks that they agree.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

from sgl_lang.stdlib import BUILTIN_NAMES

ROLES = ("system", "user", "assistant")
CONTROL_KEYWORDS = (
    "if elif else for while in break continue return pass assert fork run gen select from "
    "image".split()
)
DECLARATION_KEYWORDS = ("def", "schema", "param", "backend")
NAMESPACE_KEYWORDS = ("import", "as")
WORD_OPERATORS = ("and", "or", "not")
CONSTANTS = ("true", "false", "none")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_QUOTES = {"tdq": '"""', "tsq": "'''", "dq": '"', "sq": "'"}


def _string_states() -> dict[str, list[Any]]:
    """For each quote kind, a state for the interpolated string and one for the raw string."""
    states: dict[str, list[Any]] = {}
    for kind, quote in _QUOTES.items():
        single_line = len(quote) == 1
        # A lone quote character of the other kind, or of this kind but not closing a triple.
        body = r"[^\\{}\n" + quote[0] + "]+" if single_line else r"[^\\{}" + quote[0] + "]+"
        states[kind] = [
            (quote, String, "#pop"),
            (r"\\(u[0-9a-fA-F]{4}|.|\n)", String.Escape),
            (r"\{\{|\}\}", String.Escape),
            (r"\{", String.Interpol, "interpolation"),
            (r"\}", String),
            (body, String),
            (r"\n", Text if single_line else String),
            (quote[0], String),
        ]
        raw_body = r"[^\n" + quote[0] + "]+" if single_line else r"[^" + quote[0] + "]+"
        states["raw" + kind] = [
            (quote, String, "#pop"),
            (raw_body, String),
            (r"\n", Text if single_line else String),
            (quote[0], String),
        ]
    return states


class SglLexer(RegexLexer):
    """Lexer for `.sgl` prompt programs."""

    name = "SGL"
    aliases: ClassVar[list[str]] = ["sgl"]
    filenames: ClassVar[list[str]] = ["*.sgl"]
    mimetypes: ClassVar[list[str]] = ["text/x-sgl"]
    url = "https://github.com/sgl-project/sglang"

    tokens: ClassVar[dict[str, list[Any]]] = {
        "root": [
            (r"\n", Whitespace),
            (r"[ \t\f]+", Whitespace),
            (r"#.*$", Comment.Single),
            include("strings"),
            (
                r"\b(def)(\s+)(" + _NAME + ")",
                bygroups(Keyword.Declaration, Whitespace, Name.Function),
            ),
            (
                r"\b(schema)(\s+)(" + _NAME + ")",
                bygroups(Keyword.Declaration, Whitespace, Name.Class),
            ),
            (
                r"\b(param)(\s+)(" + _NAME + ")",
                bygroups(Keyword.Declaration, Whitespace, Name.Variable),
            ),
            (
                r"\b(gen|select)(\s+)(" + _NAME + r")(\s*)(\()",
                bygroups(Keyword, Whitespace, Name.Variable.Magic, Whitespace, Punctuation),
                "arguments",
            ),
            (
                r"\b(gen|select)(\s+)(" + _NAME + ")",
                bygroups(Keyword, Whitespace, Name.Variable.Magic),
            ),
            (r"\bnot[ \t]+in\b", Operator.Word),
            (words(ROLES, prefix=r"\b", suffix=r"\b"), Keyword.Pseudo),
            (words(CONSTANTS, prefix=r"\b", suffix=r"\b"), Keyword.Constant),
            (words(WORD_OPERATORS, prefix=r"\b", suffix=r"\b"), Operator.Word),
            (words(DECLARATION_KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword.Declaration),
            (words(NAMESPACE_KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword.Namespace),
            (words(CONTROL_KEYWORDS, prefix=r"\b", suffix=r"\b"), Keyword),
            (words(sorted(BUILTIN_NAMES), prefix=r"\b", suffix=r"\b"), Name.Builtin),
            include("numbers"),
            (_NAME, Name),
            (r"\*\*|//=?|[-+*/%]=?|==|!=|<=|>=|[<>=?|]", Operator),
            (r"[{}()\[\],.:]", Punctuation),
        ],
        "numbers": [
            (r"([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", Number.Float),
            (r"[0-9]+[eE][-+]?[0-9]+", Number.Float),
            (r"[0-9]+", Number.Integer),
        ],
        "strings": [
            (r'[rR]"""', String, "rawtdq"),
            (r"[rR]'''", String, "rawtsq"),
            (r'[rR]"', String, "rawdq"),
            (r"[rR]'", String, "rawsq"),
            (r'"""', String, "tdq"),
            (r"'''", String, "tsq"),
            (r'"', String, "dq"),
            (r"'", String, "sq"),
        ],
        "arguments": [  # of `gen NAME(...)` / `select NAME(...)`
            (r"\)", Punctuation, "#pop"),
            (r"\(", Punctuation, "parentheses"),
            (_NAME + r"(?=[ \t]*=(?!=))", Name.Attribute),
            include("root"),
        ],
        "parentheses": [
            (r"\)", Punctuation, "#pop"),
            (r"\(", Punctuation, "#push"),
            include("root"),
        ],
        "interpolation": [
            (r"\}", String.Interpol, "#pop"),
            (r":[^{}\[\]()'\"\n]*(?=\})", String.Interpol),  # a format spec: {score:.2f}
            (r"\{", Punctuation, "interpolation-brace"),
            include("root"),
        ],
        "interpolation-brace": [
            (r"\}", Punctuation, "#pop"),
            (r"\{", Punctuation, "#push"),
            include("root"),
        ],
        **_string_states(),
    }
