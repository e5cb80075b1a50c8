"""`sgl fmt`: one canonical layout for `.sgl` source, comments kept, meaning unchanged.

The formatter works on the parser's own tokens (`grammar.layout_tokens`), so it never has to
guess what a piece of text is. The layout: four spaces per block level; one space around
binary operators, `=` of assignments and after commas and colons; none inside brackets, before
a call's or an index's bracket, around a keyword argument's `=` or in a slice; two spaces
before a trailing comment; at most two blank lines between top-level statements and one
inside a block, none at the start of a block or of the file. Strings, numbers, comments and
the line breaks written inside brackets are kept as written. `format_source` refuses to return
a text whose AST differs from the input's (`same_program`), so a formatter bug can never change
what a program does. See docs/language.md ("Command line").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lark import Token

from sgl_lang import nodes
from sgl_lang.errors import SglError
from sgl_lang.grammar import layout_tokens, parse_text
from sgl_lang.source import Source, Span
from sgl_lang.transform import KEYWORDS

INDENT = "    "
_OPENERS = {"LPAR", "LSQB", "LBRACE"}
_CLOSERS = {"RPAR", "RSQB", "RBRACE"}
_NO_SPACE_BEFORE = {"RPAR", "RSQB", "RBRACE", "COMMA", "COLON", "DOT", "QMARK"}
_NO_SPACE_AFTER = {"LPAR", "LSQB", "LBRACE", "DOT", "DOUBLE_STAR"}
_CALLABLE_ENDS = {"NAME", "STRING", "INT", "FLOAT", "RPAR", "RSQB", "RBRACE"}
_OPERATORS = {"ADD_OP", "MUL_OP", "COMP_OP", "AUG_OP", "EQUAL", "NOT_IN", "DOUBLE_STAR", "VBAR"}
_UNARY_AFTER = _OPERATORS | _OPENERS | {"COMMA", "COLON"}
_SIGN_AFTER = KEYWORDS - {"true", "false", "none"}  # `return -1`, `x if -a else b`


class FormatError(SglError):
    """The formatted text would not be the same program (a formatter bug; nothing written)."""


def format_source(text: str, name: str = "<string>") -> str:
    """`text` in the canonical layout. Raises the `SglSyntaxError` of a text that does not
    parse, and `FormatError` if the result would not parse to the same program."""
    before = parse_text(text, name)
    formatted = _Printer(text).print()
    try:
        after = parse_text(formatted, name)
    except SglError as error:
        raise FormatError(f"formatting would break the program ({error.message})") from None
    if not same_program(before, after):
        raise FormatError("formatting would change the program; the file is left as it is")
    return formatted


def same_program(a: nodes.Program, b: nodes.Program) -> bool:
    """Whether two programs have the same AST, wherever their nodes are in their files."""
    return _shape(a.body) == _shape(b.body)


def _shape(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_shape(item) for item in value)
    if isinstance(value, nodes.Node):
        parts = [
            _shape(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if not isinstance(getattr(value, field.name), (Span, Source))
        ]
        return (type(value).__name__, *parts)
    return value


class _Printer:
    """Prints one program's tokens line by line."""

    def __init__(self, text: str) -> None:
        self.text = text.replace("\r\n", "\n")
        self.lines: list[str] = []
        self.line: list[str] = []  # the pieces of the code line being built
        self.level = 0  # block depth of that line
        self.brackets: list[str] = []  # the open brackets, innermost last
        self.prev: Token | None = None  # the last token printed on this logical line
        self.prev_unary = False
        self.pending: list[tuple[str, int]] = []  # (comment or "", its indent) before next code
        self.next_indent = 0  # the written indentation width of the next code line
        self.block_start = False  # the next code line opens a block: no blank line before it
        self.widths = [0]  # the written indentation width of each open block level
        self.last_code_widths = [0]  # the same, at the last code line

    def print(self) -> str:
        for token in layout_tokens(self.text + "\n"):
            if token.type == "_NEWLINE":
                self._newline(token)
            elif token.type == "_INDENT":
                self.level += 1
                self.widths.append(self.next_indent)
                self.block_start = True
            elif token.type == "_DEDENT":
                self.level -= 1
                self.widths.pop()
            else:
                self._token(token)
        self._end_line("")
        self._flush_pending(end_of_file=True)
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "".join(line + "\n" for line in self.lines)

    # -- logical lines ---------------------------------------------------------------------

    def _newline(self, token: Token) -> None:
        """The end of a logical line: its trailing comment, then the blank and comment lines
        before the next one (printed once that line's level is known)."""
        parts = token.value.split("\n")
        trailing, between, self.next_indent = parts[0], parts[1:-1], len(parts[-1])
        if self.line:
            self._end_line(trailing)
        elif trailing:
            self.pending.append((trailing, 0))
        for part in between:
            stripped = part.strip()
            self.pending.append((stripped, len(part) - len(part.lstrip())))
        self.prev, self.prev_unary = None, False

    def _end_line(self, comment: str) -> None:
        if not self.line:
            return
        code = "".join(self.line)
        self.lines.append(code + (f"  {comment.strip()}" if comment else ""))
        self.last_code_widths = list(self.widths)
        self.line = []

    def _flush_pending(self, *, end_of_file: bool = False) -> None:
        """The blank and comment lines before the code line at `self.level`: a comment indented
        deeper than that line stays in the block above it that its indentation reaches; runs
        of blank lines shrink to two at the top level and one in a block, and none open a
        block or the file or end it."""
        blanks = 0
        limit = 2 if self.level == 0 else 1
        for comment, indent in self.pending:
            if not comment:
                blanks += 1
                continue
            self._blank_lines(blanks, limit)
            blanks = 0
            self.lines.append(INDENT * self._comment_level(indent) + comment)
            self.block_start = False
        if not end_of_file:
            self._blank_lines(blanks, limit)
        self.pending = []
        self.block_start = False

    def _comment_level(self, indent: int) -> int:
        """The level of a comment line written `indent` wide before a code line."""
        if indent <= self.next_indent:
            return self.level
        widths = self.last_code_widths
        return max(
            (level for level in range(self.level, len(widths)) if widths[level] <= indent),
            default=self.level,
        )

    def _blank_lines(self, count: int, limit: int) -> None:
        if self.lines and not self.block_start:
            self.lines.extend([""] * min(count, limit))

    # -- tokens ----------------------------------------------------------------------------

    def _token(self, token: Token) -> None:
        if not self.line:
            self._flush_pending()
            self.line.append(INDENT * self.level)
        elif self.brackets and "\n" in self._gap_before(token):
            self._break_inside_brackets(token)
        elif self._space_before(token):
            self.line.append(" ")
        self.line.append(_text(token))
        self.prev_unary = token.type == "ADD_OP" and self._is_unary_position()
        self._track_brackets(token)
        self.prev = token

    def _gap_before(self, token: Token) -> str:
        start = self.prev.end_pos if self.prev is not None else token.start_pos
        return self.text[start : token.start_pos]

    def _break_inside_brackets(self, token: Token) -> None:
        """A line break the author wrote inside brackets, with the comments around it; the
        next line is indented one level per open bracket (one less for a closing one)."""
        lines = self._gap_before(token).split("\n")
        self._end_line(lines[0].strip())
        depth = len(self.brackets) - (token.type in _CLOSERS)
        indent = INDENT * (self.level + depth)
        for part in lines[1:-1]:
            if part.strip():
                self.lines.append(indent + part.strip())
        self.line.append(indent)

    def _track_brackets(self, token: Token) -> None:
        if token.type in _OPENERS:
            self.brackets.append(token.type)
        elif token.type in _CLOSERS and self.brackets:
            self.brackets.pop()

    def _is_unary_position(self) -> bool:
        """Whether a `+`/`-` now is a sign: at the start, after an operator, an opening
        bracket, a comma or colon, or a keyword."""
        prev = self.prev
        return prev is None or prev.type in _UNARY_AFTER or str(prev.value) in _SIGN_AFTER

    def _space_before(self, token: Token) -> bool:
        prev = self.prev
        if prev is None:
            return False
        kind, before = token.type, prev.type
        if before == "COLON":
            return not self._in_slice()  # `{a: 1}`, `name: str`, `if x: pass`; `a[1:2]`
        if kind in _NO_SPACE_BEFORE or before in _NO_SPACE_AFTER or self.prev_unary:
            return False
        if kind in ("LPAR", "LSQB") and before in _CALLABLE_ENDS:
            return False  # a call or an index
        if kind == "EQUAL" or before == "EQUAL":
            return not self.brackets  # `x = 1`, but `f(k=1)` and `def f(a=1)`
        return True

    def _in_slice(self) -> bool:
        return bool(self.brackets) and self.brackets[-1] == "LSQB"


def _text(token: Token) -> str:
    if token.type == "NOT_IN":
        return "not in"
    return str(token.value)
