"""The parser: loads `sgl.lark` once and turns source text into nodes; Lark errors become SglSyntaxError."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

from lark import Lark, Token
from lark.exceptions import LarkError, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from sgl_lang import nodes
from sgl_lang.errors import SglSyntaxError
from sgl_lang.source import Source
from sgl_lang.transform import KEYWORDS, ToAst, located

_OPEN_BRACKETS = frozenset({"LPAR", "LSQB", "LBRACE"})
_CLOSE_BRACKETS = frozenset({"RPAR", "RSQB", "RBRACE"})
_LAYOUT_TOKENS = frozenset({"_NEWLINE", "_INDENT", "_DEDENT"})

# Limits on nesting (CPython's: 200 nested brackets, 100 indentation levels). Brackets and
# blocks nest in the parser; operator chains (`1 + 1 + …`, `a.b.c…`, `- - x`) nest in the
# tree, which the checkers and the interpreter walk recursively: MAX_EXPR_DEPTH bounds that
# depth, and `parse` makes the recursion limit cover a walk of any tree it returns.
MAX_BRACKET_DEPTH = 200
MAX_INDENT_LEVELS = 100
MAX_EXPR_DEPTH = 2000
_FRAMES_PER_LEVEL = 4  # twice what the deepest walker (the interpreter's eval) takes
_RECURSION_LIMIT = _FRAMES_PER_LEVEL * (MAX_EXPR_DEPTH + MAX_INDENT_LEVELS) + 2000


def parse(source: Source) -> nodes.Program:
    """Parse a whole program."""
    body = _parse(source, source.text + "\n", "start", 0)
    _check_depth(body)
    if sys.getrecursionlimit() < _RECURSION_LIMIT:
        sys.setrecursionlimit(_RECURSION_LIMIT)
    return nodes.Program(source, body)


def parse_text(text: str, name: str = "<string>") -> nodes.Program:
    """Parse program text reported under `name`."""
    return parse(Source(name, text))


def parse_expr(source: Source, start: int, end: int) -> nodes.Expr:
    """Parse the expression at `source.text[start:end]` (an interpolation), with spans into `source`."""
    expr: nodes.Expr = _parse(source, "(" + source.text[start:end] + ")", "expr_only", start - 1)
    return expr


def _parse(source: Source, text: str, start: str, offset: int) -> Any:
    """Parse `text`, found at `offset` in `source`, from grammar rule `start`."""
    try:
        with located(source, offset, parse_expr):
            return _lark().parse(text, start=start)
    except (UnexpectedInput, LayoutProblem) as err:
        raise _syntax_error(err, source, text, offset) from None


def layout_tokens(text: str) -> list[Token]:
    """The tokens of `text` as the parser reads them: indentation as _INDENT/_DEDENT, and
    comments inside the _NEWLINE tokens (or, within brackets, between tokens)."""
    return list(_lark().lex(text))


@cache
def _lark() -> Lark:
    grammar = resources.files("sgl_lang.grammars").joinpath("sgl.lark").read_text("utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="basic",
        start=["start", "expr_only"],
        postlex=Indenter(),
        transformer=ToAst(),
        keep_all_tokens=True,
        maybe_placeholders=True,
    )


def _check_depth(body: tuple[nodes.Stmt, ...]) -> None:
    """A syntax error at an expression nested more than MAX_EXPR_DEPTH deep."""
    pending: list[tuple[nodes.Node, int]] = [(stmt, 0) for stmt in body]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, nodes.Expr):
            depth += 1
            if depth > MAX_EXPR_DEPTH:
                message = f"expression nested too deeply (more than {MAX_EXPR_DEPTH} levels)"
                hint = "split it into several statements"
                raise SglSyntaxError(message, node.span, hint=hint)
        pending.extend((child, depth) for child in nodes.children(node))


# ---------------------------------------------------------------- indentation


class LayoutProblem(LarkError):
    """Bad indentation or nesting found by the postlexer, at offsets `start:end`."""

    def __init__(self, message: str, start: int, end: int) -> None:
        super().__init__(message)
        self.message = message
        self.start = start
        self.end = end


class Indenter(PostLex):
    """Turns the indentation after each line break into _INDENT/_DEDENT tokens, as Python does.

    Line breaks inside brackets are dropped. All indentation of a file must use one character,
    all spaces or all tabs. Each `process` call keeps its state in its own generator.
    """

    always_accept = ("_NEWLINE",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        levels = [0]
        indent_chars: set[str] = set()
        depth = 0
        last = None
        for token in stream:
            if token.type == "_NEWLINE":
                if depth == 0:
                    yield token
                    yield from _layout(token, levels, indent_chars)
            elif last is None and token.start_pos:
                raise LayoutProblem("unexpected indent", 0, token.start_pos)
            else:
                yield token
                depth = _bracket_depth(token, depth)
                if depth > MAX_BRACKET_DEPTH:
                    message = f"too many nested brackets (more than {MAX_BRACKET_DEPTH})"
                    raise LayoutProblem(message, *_offsets(token))
            last = token
        for _ in levels[1:]:
            yield _layout_token("_DEDENT", (last and last.end_pos) or 0)


def _bracket_depth(token: Token, depth: int) -> int:
    if token.type in _OPEN_BRACKETS:
        return depth + 1
    if token.type in _CLOSE_BRACKETS:
        return max(0, depth - 1)
    return depth


def _layout(newline: Token, levels: list[int], indent_chars: set[str]) -> Iterator[Token]:
    """The _INDENT or _DEDENT tokens for the line that starts where `newline` ends."""
    indent = newline.value.rsplit("\n", 1)[1]
    line_end = newline.end_pos or 0
    line_start = line_end - len(indent)
    indent_chars.update(indent)
    if len(indent_chars) > 1:
        raise LayoutProblem("mixed tabs and spaces in indentation", line_start, line_end)
    if len(indent) > levels[-1]:
        if len(levels) > MAX_INDENT_LEVELS:
            message = f"too many levels of indentation (more than {MAX_INDENT_LEVELS})"
            raise LayoutProblem(message, line_start, line_end)
        levels.append(len(indent))
        yield _layout_token("_INDENT", line_end)
        return
    while len(indent) < levels[-1]:
        levels.pop()
        yield _layout_token("_DEDENT", line_end)
    if len(indent) != levels[-1]:
        message = "unindent does not match any outer indentation level"
        raise LayoutProblem(message, line_start, line_end)


def _layout_token(kind: str, pos: int) -> Token:
    return Token(kind, "", start_pos=pos, end_pos=pos)


# ---------------------------------------------------------------- error messages


def _syntax_error(
    err: UnexpectedInput | LayoutProblem, source: Source, text: str, offset: int
) -> SglSyntaxError:
    """An SglSyntaxError located in `source` for a Lark error in `text` (parsed at `offset`)."""
    if isinstance(err, LayoutProblem):
        message, start, end = err.message, err.start, err.end
    elif isinstance(err, UnexpectedToken):
        message, start, end = _unexpected_token(err, text)
    else:
        message, start, end = _bad_character(text, err.pos_in_stream or 0)
    limit = len(source.text)
    start = min(max(start + offset, 0), limit)
    end = min(max(end + offset, start), limit)
    return SglSyntaxError(message, source.span(start, end))


def _bad_character(text: str, pos: int) -> tuple[str, int, int]:
    char = text[pos]
    if char in "\"'":
        quote_start = pos - 2 if text[pos - 2 : pos + 1] == char * 3 else pos
        return "unterminated string", quote_start, pos + 1
    shown = f"`{char}`" if char.isprintable() else f"U+{ord(char):04X}"
    return f"unexpected character {shown}", pos, pos + 1


_EXPRESSION_STARTS = frozenset({"NAME", "INT", "STRING", "LPAR", "LSQB"})
_BLOCK_KEYWORDS = frozenset(
    {"IF", "ELIF", "ELSE", "FOR", "WHILE", "DEF", "SCHEMA", "FORK", "SYSTEM", "USER", "ASSISTANT"}
)
_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "INT": "a number",
    "FLOAT": "a number",
    "_NEWLINE": "end of line",
    "$END": "end of file",
    "_INDENT": "an indented block",
    "_DEDENT": "end of block",
    "ADD_OP": "`+` or `-`",
    "MUL_OP": "`*`, `/`, `//` or `%`",
    "AUG_OP": "`+=`",
}


def _unexpected_token(err: UnexpectedToken, text: str) -> tuple[str, int, int]:
    """A plain message for an unexpected token, and the offsets it points at."""
    token, expected = err.token, set(err.expected)
    stack = list(err.state.value_stack)
    previous = stack[-1] if stack and isinstance(stack[-1], Token) else None
    start, end = _token_range(token, stack, text)
    unclosed = _unclosed_bracket(stack, token)
    if unclosed is not None:
        return f"`{unclosed}` was never closed", *_offsets(unclosed)
    if token.type == "_INDENT":
        return "unexpected indent", start, end
    if "_INDENT" in expected:
        return f"expected an indented block after {_block_header(stack)}", start, end
    if previous is not None and previous.type in ("GEN", "SELECT") and "NAME" in expected:
        usage = "gen NAME(...)" if previous.type == "GEN" else "select NAME from [...]"
        return f"`{previous}` needs a variable name: {usage}", start, end
    if token.type == "FOR" and "RSQB" in expected:
        return "a list comprehension takes a single `for`", start, end
    if "FROM" in expected:
        return "expected `from` and the choices: select NAME from [...]", start, end
    if previous is not None and _is_keyword(previous) and token.type in ("EQUAL", "AUG_OP"):
        message = f"`{previous}` is a reserved keyword and cannot be used as a name"
        return message, *_offsets(previous)
    if token.type in ("ELSE", "ELIF"):
        return f"`{token}` without a matching `if`", start, end
    if _is_keyword(token) and "NAME" in expected:
        return f"`{token}` is a reserved keyword and cannot be used as a name", start, end
    if expected >= _EXPRESSION_STARTS:
        after = f" after `{previous}`" if previous is not None else ""
        return f"expected an expression{after}", start, end
    if "COLON" in expected and token.type == "_NEWLINE":
        return f"expected `:` at the end of {_block_header(stack, colon=False)}", start, end
    return _unexpected(token, expected), start, end


def _token_range(token: Token, stack: list[object], text: str) -> tuple[int, int]:
    """Where an unexpected token is; the end of file is pointed at right after the last token."""
    if token.type != "$END":
        start, end = _offsets(token)
        return start, max(end, start + (token.type == "_NEWLINE"))
    tokens = [item for item in stack if isinstance(item, Token) and item.type not in _LAYOUT_TOKENS]
    end = _offsets(tokens[-1])[1] if tokens else len(text)
    return end, end


def _offsets(token: Token) -> tuple[int, int]:
    return token.start_pos or 0, token.end_pos or 0


def _unclosed_bracket(stack: list[object], token: Token) -> Token | None:
    """The innermost bracket still open when the file ends."""
    if token.type != "$END":
        return None
    opened = [item for item in stack if isinstance(item, Token) and item.type in _OPEN_BRACKETS]
    return opened[-1] if opened else None


def _block_header(stack: list[object], colon: bool = True) -> str:
    """How the block statement being parsed starts, e.g. "`if …:`", "`else:`" or "`user:`"."""
    keywords = [item for item in stack if isinstance(item, Token) and item.type in _BLOCK_KEYWORDS]
    if not keywords:
        return "the line"
    keyword = keywords[-1].value
    bare = keyword in ("else", "system", "user", "assistant")
    return f"`{keyword}{'' if bare else ' …'}{':' if colon else ''}`"


def _is_keyword(token: Token) -> bool:
    return token.type != "NAME" and token.value in KEYWORDS


def _unexpected(token: Token, expected: set[str]) -> str:
    """ "unexpected X", with what was expected when that is short enough to be useful."""
    found = {"$END": "end of file", "_NEWLINE": "end of line", "_DEDENT": "end of block"}
    message = f"unexpected {found.get(token.type) or f'`{token.value}`'}"
    words = sorted({_terminal_words(name) for name in expected - _LAYOUT_TOKENS})
    if 0 < len(words) <= 3 and not expected & {"_NEWLINE", "$END"}:
        choices = " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
        message += f", expected {choices}"
    return message


def _terminal_words(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    return f"`{_lark().get_terminal(name).pattern.value}`"
