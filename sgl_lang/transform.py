"""Lark parse tree -> AST nodes with spans; the only module that touches lark.Tree and Token.

`ToAst` runs inside the LALR parser (Lark's `transformer=` option), so no parse tree is built:
each callback gets its rule's children, tokens included (`keep_all_tokens`), and takes spans
from the first and last of them. The source being parsed is set per parse by `located`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, NamedTuple

from lark import Token, Transformer

from sgl_lang import nodes
from sgl_lang.errors import SglSyntaxError
from sgl_lang.source import Source, Span

KEYWORDS = frozenset(
    "def return if elif else for while in break continue fork run gen select from param schema"
    " import as backend system user assistant image and or not true false none pass assert".split()
)

ParseExpr = Callable[[Source, int, int], nodes.Expr]
"""Parses `source.text[start:end]` as an expression (used for `{…}` in strings)."""

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'", "\n": ""}
_STRING_SPECIALS = re.compile(r"\\|\{\{?|\}\}?")
_INDENTATION = re.compile(r"[ \t]*")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class _Located(NamedTuple):
    source: Source
    offset: int  # where the parsed text starts in `source`
    parse_expr: ParseExpr


_located: ContextVar[_Located] = ContextVar("sgl_located")


@contextmanager
def located(source: Source, offset: int, parse_expr: ParseExpr) -> Iterator[None]:
    """Build spans into `source` for text parsed from `offset` within this block."""
    reset = _located.set(_Located(source, offset, parse_expr))
    try:
        yield
    finally:
        _located.reset(reset)


Item = Any  # a rule's child: a Token, a node, or a value built by another callback


def _start(item: Item, offset: int) -> int:
    return offset + (item.start_pos or 0) if isinstance(item, Token) else item.span.start


def _end(item: Item, offset: int) -> int:
    return offset + (item.end_pos or 0) if isinstance(item, Token) else item.span.end


def _span(first: Item, last: Item) -> Span:
    """The span from the start of `first` to the end of `last` (tokens or nodes)."""
    source, offset, _ = _located.get()
    return source.span(_start(first, offset), _end(last, offset))


def _nodes(items: tuple[Item, ...]) -> tuple[Any, ...]:
    """The children that are not punctuation or layout tokens."""
    return tuple(item for item in items if not isinstance(item, Token))


class ToAst(Transformer[Token, Any]):
    """One callback per grammar rule; each returns a node (or a part of one)."""

    # ------------------------------------------------------------ statements

    def start(self, items: list[Item]) -> tuple[nodes.Stmt, ...]:
        return _nodes(tuple(items))

    def expr_only(self, items: list[Item]) -> nodes.Expr:
        return items[0]

    def suite(self, items: list[Item]) -> tuple[nodes.Stmt, ...]:
        return _nodes(tuple(items))

    def expr_stmt(self, items: list[Item]) -> nodes.Stmt:
        (expr,) = items
        if isinstance(expr, nodes.Str):
            return nodes.Append(expr.span, expr)
        return nodes.ExprStmt(expr.span, expr)

    def assign(self, items: list[Item]) -> nodes.Assign:
        targets, _, value = items
        return nodes.Assign(_span(targets[0], value), targets, value)

    def fork_assign(self, items: list[Item]) -> nodes.Assign:
        targets, _, fork = items
        return nodes.Assign(_span(targets[0], fork), targets, fork)

    def targets(self, items: list[Item]) -> tuple[nodes.Name | nodes.Index | nodes.Attribute, ...]:
        return tuple(_target(expr) for expr in _nodes(tuple(items)))

    def aug_assign(self, items: list[Item]) -> nodes.AugAssign:
        target, op, value = items
        if not isinstance(target, nodes.Name | nodes.Index):
            raise SglSyntaxError(f"`{op}` needs a name or `x[i]` on its left", target.span)
        return nodes.AugAssign(_span(target, value), target, op.value[:-1], value)

    def role_line(self, items: list[Item]) -> nodes.Role:
        role, content = items
        if not isinstance(content, nodes.Gen | nodes.Select | nodes.ImageStmt):
            content = nodes.Append(content.span, content)
        return nodes.Role(_span(role, content), role.value, (content,), inline=True)

    def role_block(self, items: list[Item]) -> nodes.Role:
        role, _, body = items
        return nodes.Role(_span(role, body[-1]), role.value, body, inline=False)

    def gen(self, items: list[Item]) -> nodes.Gen:
        keyword, name, _, args, close = items
        keywords = _keywords_only(keyword, args)
        return nodes.Gen(_span(keyword, close or name), name.value, _span(name, name), keywords)

    def select(self, items: list[Item]) -> nodes.Select:
        keyword, name, _, args, _, _, choices = items
        keywords = _keywords_only(keyword, args)
        return nodes.Select(
            _span(keyword, choices), name.value, _span(name, name), keywords, choices
        )

    def image(self, items: list[Item]) -> nodes.ImageStmt:
        keyword, value = items
        return nodes.ImageStmt(_span(keyword, value), value)

    def pass_stmt(self, items: list[Item]) -> nodes.Pass:
        return nodes.Pass(_span(items[0], items[0]))

    def break_stmt(self, items: list[Item]) -> nodes.Break:
        return nodes.Break(_span(items[0], items[0]))

    def continue_stmt(self, items: list[Item]) -> nodes.Continue:
        return nodes.Continue(_span(items[0], items[0]))

    def return_stmt(self, items: list[Item]) -> nodes.Return:
        keyword, value = items
        return nodes.Return(_span(keyword, value or keyword), value)

    def assert_stmt(self, items: list[Item]) -> nodes.Assert:
        keyword, test, _, message = items
        return nodes.Assert(_span(keyword, message or test), test, message)

    def param_decl(self, items: list[Item]) -> nodes.ParamDecl:
        keyword, name, _, default = items
        return nodes.ParamDecl(_span(keyword, default or name), name.value, default)

    def import_path(self, items: list[Item]) -> nodes.Import:
        keyword, path, _, alias = items
        text = _constant(path, "an import path")
        if "\0" in text:
            raise SglSyntaxError("an import path cannot contain a NUL character", _span(path, path))
        return nodes.Import(_span(keyword, alias), text, None, alias.value)

    def import_module(self, items: list[Item]) -> nodes.Import:
        keyword, module, _, alias = items
        alias = alias or module
        return nodes.Import(_span(keyword, alias), None, module.value, alias.value)

    def backend_decl(self, items: list[Item]) -> nodes.BackendDecl:
        keyword, uri = items
        return nodes.BackendDecl(_span(keyword, uri), _constant(uri, "a backend URI"))

    def if_stmt(self, items: list[Item]) -> nodes.If:
        keyword, test, _, body, *elifs, orelse = items
        orelse = orelse or ()
        for clause in reversed(elifs):
            end = orelse[-1] if orelse else clause
            orelse = (replace(clause, span=clause.span.to(end.span), orelse=orelse),)
        return nodes.If(_span(keyword, body[-1]), test, body, orelse)

    def elif_clause(self, items: list[Item]) -> nodes.If:
        keyword, test, _, body = items
        return nodes.If(_span(keyword, body[-1]), test, body, ())

    def else_clause(self, items: list[Item]) -> tuple[nodes.Stmt, ...]:
        return items[-1]

    def for_stmt(self, items: list[Item]) -> nodes.For:
        keyword, targets, _, iterable, _, body = items
        return nodes.For(_span(keyword, body[-1]), targets, iterable, body)

    def while_stmt(self, items: list[Item]) -> nodes.While:
        keyword, test, _, body = items
        return nodes.While(_span(keyword, body[-1]), test, body)

    def names(self, items: list[Item]) -> tuple[str, ...]:
        return tuple(item.value for item in items if item.type == "NAME")

    def fork_in(self, items: list[Item]) -> nodes.Fork:
        keyword, var, _, iterable, _, body = items
        return nodes.Fork(_span(keyword, body[-1]), var.value, iterable, None, body)

    def fork_count(self, items: list[Item]) -> nodes.Fork:
        keyword, count, _, body = items
        return nodes.Fork(_span(keyword, body[-1]), None, None, count, body)

    def func_def(self, items: list[Item]) -> nodes.FuncDef:
        keyword, name, _, params, _, _, body = items
        span = _span(keyword, body[-1])
        doc = _comment_above(span.source, span.line)
        return nodes.FuncDef(span, name.value, _span(name, name), params or (), body, doc)

    def params(self, items: list[Item]) -> tuple[nodes.Param, ...]:
        params: tuple[nodes.Param, ...] = _nodes(tuple(items))
        seen: set[str] = set()
        for before, param in zip((None, *params), params, strict=False):
            if param.name in seen:
                raise SglSyntaxError(f"duplicate parameter `{param.name}`", param.span)
            if before and before.default and not param.default:
                message = "a parameter without a default cannot follow one with a default"
                raise SglSyntaxError(message, param.span)
            seen.add(param.name)
        return params

    def param(self, items: list[Item]) -> nodes.Param:
        name, _, default = items
        return nodes.Param(_span(name, default or name), name.value, default)

    # ------------------------------------------------------------ schemas

    def schema_decl(self, items: list[Item]) -> nodes.SchemaDecl:
        keyword, name, *rest = items
        fields: tuple[nodes.SchemaField, ...] = _nodes(tuple(rest))
        return nodes.SchemaDecl(_span(keyword, fields[-1]), name.value, _span(name, name), fields)

    def schema_field(self, items: list[Item]) -> nodes.SchemaField:
        name, _, type, optional, _ = items
        return nodes.SchemaField(
            _span(name, optional or type), name.value, type, optional is not None
        )

    def named_type(self, items: list[Item]) -> nodes.NamedType:
        (name,) = items
        if name.value in ("list", "dict"):
            hint = "list[T]" if name.value == "list" else "dict[str, T]"
            raise SglSyntaxError(f"`{name.value}` needs its item type: {hint}", _span(name, name))
        return nodes.NamedType(_span(name, name), name.value)

    def generic_type(self, items: list[Item]) -> nodes.SchemaType:
        name, _, first, _, second, close = items
        span = _span(name, close)
        if name.value == "list" and second is None:
            return nodes.ListType(span, first)
        is_str_key = isinstance(first, nodes.NamedType) and first.name == "str"
        if name.value == "dict" and second is not None and is_str_key:
            return nodes.DictType(span, second)
        raise SglSyntaxError("a generic field type is `list[T]` or `dict[str, T]`", span)

    def enum_type(self, items: list[Item]) -> nodes.EnumType:
        options = tuple(
            _constant(item, "an enum option") for item in items if item.type == "STRING"
        )
        return nodes.EnumType(_span(items[0], items[-1]), options)

    # ------------------------------------------------------------ expressions

    def if_expr(self, items: list[Item]) -> nodes.IfExpr:
        body, _, test, _, orelse = items
        return nodes.IfExpr(_span(body, orelse), test, body, orelse)

    def bool_op(self, items: list[Item]) -> nodes.BoolOp:
        left, op, right = items
        return nodes.BoolOp(_span(left, right), op.value, left, right)

    def not_op(self, items: list[Item]) -> nodes.UnaryOp:
        keyword, operand = items
        return nodes.UnaryOp(_span(keyword, operand), "not", operand)

    def compare(self, items: list[Item]) -> nodes.Compare:
        left, *rest = items
        ops = tuple("not in" if op.type == "NOT_IN" else op.value for op in rest[0::2])
        return nodes.Compare(_span(left, rest[-1]), left, ops, tuple(rest[1::2]))

    def binop(self, items: list[Item]) -> nodes.BinOp:
        left, op, right = items
        return nodes.BinOp(_span(left, right), op.value, left, right)

    def unary(self, items: list[Item]) -> nodes.UnaryOp:
        op, operand = items
        return nodes.UnaryOp(_span(op, operand), op.value, operand)

    def run_expr(self, items: list[Item]) -> nodes.RunExpr:
        keyword, call = items
        if not isinstance(call, nodes.Call):
            raise SglSyntaxError("`run` needs a function call: run f(args)", call.span)
        return nodes.RunExpr(_span(keyword, call), call)

    def name(self, items: list[Item]) -> nodes.Name:
        (token,) = items
        return nodes.Name(_span(token, token), token.value)

    def int_const(self, items: list[Item]) -> nodes.Const:
        (token,) = items
        return nodes.Const(_span(token, token), int(token))

    def float_const(self, items: list[Item]) -> nodes.Const:
        (token,) = items
        return nodes.Const(_span(token, token), float(token))

    def string(self, items: list[Item]) -> nodes.Str:
        (token,) = items
        return _read_string(token)

    def true_const(self, items: list[Item]) -> nodes.Const:
        return nodes.Const(_span(items[0], items[0]), True)

    def false_const(self, items: list[Item]) -> nodes.Const:
        return nodes.Const(_span(items[0], items[0]), False)

    def none_const(self, items: list[Item]) -> nodes.Const:
        return nodes.Const(_span(items[0], items[0]), None)

    def list_expr(self, items: list[Item]) -> nodes.ListExpr:
        return nodes.ListExpr(_span(items[0], items[-1]), _nodes(tuple(items)))

    def list_comp(self, items: list[Item]) -> nodes.ListComp:
        _, elt, _, targets, _, iterable, *rest = items
        conditions = _nodes(tuple(rest))
        return nodes.ListComp(_span(items[0], items[-1]), elt, targets, iterable, conditions)

    def dict_expr(self, items: list[Item]) -> nodes.DictExpr:
        return nodes.DictExpr(_span(items[0], items[-1]), _nodes(tuple(items)))

    def dict_item(self, items: list[Item]) -> tuple[nodes.Expr, nodes.Expr]:
        key, _, value = items
        return key, value

    def paren(self, items: list[Item]) -> nodes.Expr:
        return items[1]

    def call(self, items: list[Item]) -> nodes.Call:
        func, _, args, close = items
        args = args or ()
        positional = tuple(arg for arg in args if not isinstance(arg, nodes.Keyword))
        keywords = tuple(arg for arg in args if isinstance(arg, nodes.Keyword))
        return nodes.Call(_span(func, close), func, positional, keywords)

    def index(self, items: list[Item]) -> nodes.Index:
        value, _, index, close = items
        return nodes.Index(_span(value, close), value, index)

    def slice(self, items: list[Item]) -> nodes.Slice:
        lower, _, upper, _, step = items
        present = [item for item in items if item is not None]
        return nodes.Slice(_span(present[0], present[-1]), lower, upper, step)

    def attribute(self, items: list[Item]) -> nodes.Attribute:
        value, _, name = items
        return nodes.Attribute(_span(value, name), value, name.value)

    def arguments(self, items: list[Item]) -> tuple[nodes.Expr | nodes.Keyword, ...]:
        args: tuple[nodes.Expr | nodes.Keyword, ...] = _nodes(tuple(items))
        seen: set[str] = set()
        for before, arg in zip((None, *args), args, strict=False):
            if isinstance(before, nodes.Keyword) and not isinstance(arg, nodes.Keyword):
                raise SglSyntaxError(
                    "a positional argument cannot follow keyword arguments", arg.span
                )
            if isinstance(arg, nodes.Keyword) and arg.name is not None:
                if arg.name in seen:
                    raise SglSyntaxError(f"keyword argument `{arg.name}` given twice", arg.span)
                seen.add(arg.name)
        return args

    def keyword(self, items: list[Item]) -> nodes.Keyword:
        name, _, value = items
        return nodes.Keyword(_span(name, value), name.value, value)

    def kwargs(self, items: list[Item]) -> nodes.Keyword:
        stars, value = items
        return nodes.Keyword(_span(stars, value), None, value)


def _keywords_only(keyword: Token, args: tuple[Item, ...] | None) -> tuple[nodes.Keyword, ...]:
    for arg in args or ():
        if not isinstance(arg, nodes.Keyword):
            message = (
                f"`{keyword}` takes keyword arguments only, e.g. {keyword} NAME(max_tokens=16)"
            )
            raise SglSyntaxError(message, arg.span)
    return args or ()


def _read_string(token: Token) -> nodes.Str:
    located = _located.get()
    return _StringReader(located, _start(token, located.offset), token.value).read()


def _constant(token: Token, what: str) -> str:
    """The text of a string literal that must not interpolate."""
    string = _read_string(token)
    if not string.is_constant:
        raise SglSyntaxError(f"{what} must be a plain string, without `{{…}}`", string.span)
    return "".join(string.parts)  # type: ignore[arg-type]


def _target(expr: nodes.Expr) -> nodes.Name | nodes.Index | nodes.Attribute:
    if isinstance(expr, nodes.Name | nodes.Index | nodes.Attribute):
        return expr
    raise SglSyntaxError(
        "cannot assign to this expression: assign to a name, `x[i]` or `x.y`", expr.span
    )


def _comment_above(source: Source, line_no: int) -> str | None:
    """The `#` comment lines directly above line `line_no`, joined, without their `# `."""
    lines: list[str] = []
    while line_no > 1 and source.line(line_no - 1).lstrip().startswith("#"):
        line_no -= 1
        text = source.line(line_no).lstrip()[1:]
        lines.append(text[1:] if text.startswith(" ") else text)
    return "\n".join(reversed(lines)) if lines else None


class _StringReader:
    """Reads one string literal token: escapes, `{…}` interpolation and triple-quote dedent.

    `text` is the literal's content after dedent; `origins[i]` is the source offset of `text[i]`
    (with one more entry, for the end).
    """

    def __init__(self, located: _Located, start: int, token: str) -> None:
        self.source = located.source
        self.parse_expr = located.parse_expr
        self.start = start
        self.end = start + len(token)
        self.raw = token[0] in "rR"
        prefix_len = int(self.raw)
        quote_len = 3 if token[prefix_len : prefix_len + 3] in ('"""', "'''") else 1
        content_start = start + prefix_len + quote_len
        content = token[prefix_len + quote_len : len(token) - quote_len]
        self.text: str = content
        self.origins: Sequence[int] = range(content_start, content_start + len(content) + 1)
        if quote_len == 3:
            self.text, self.origins = _dedent(content, content_start)

    def read(self) -> nodes.Str:
        span = self.source.span(self.start, self.end)
        if self.raw or not _STRING_SPECIALS.search(self.text):
            return nodes.Str(span, (self.text,))
        parts: list[str | nodes.Interp] = []
        pos = 0
        while (found := _STRING_SPECIALS.search(self.text, pos)) is not None:
            parts.append(self.text[pos : found.start()])
            piece, pos = self._special(found.group(), found.start())
            parts.append(piece)
        parts.append(self.text[pos:])
        return nodes.Str(span, _merge(parts))

    def _span(self, start: int, end: int) -> Span:
        return self.source.span(self.origins[start], self.origins[end - 1] + 1)

    def _special(self, special: str, pos: int) -> tuple[str | nodes.Interp, int]:
        """The text or Interp for the special at `pos`, and the position after it."""
        if special == "\\":
            return self._escape(pos)
        if special in ("{{", "}}"):
            return special[0], pos + 2
        if special == "}":
            raise SglSyntaxError(
                "single `}` in a string: write `}}` for a literal brace", self._span(pos, pos + 1)
            )
        return self._interpolation(pos)

    def _escape(self, pos: int) -> tuple[str, int]:
        char = self.text[pos + 1 : pos + 2]
        if char in _ESCAPES:
            return _ESCAPES[char], pos + 2
        if char == "u":
            digits = self.text[pos + 2 : pos + 6]
            if len(digits) == 4 and all(d in "0123456789abcdefABCDEF" for d in digits):
                return chr(int(digits, 16)), pos + 6
            raise SglSyntaxError(
                "`\\u` needs four hex digits, e.g. \\u00e9", self._span(pos, pos + 2)
            )
        message = (
            f'unknown escape `\\{char}`: write `\\\\` for a backslash, or use a raw string r"…"'
        )
        raise SglSyntaxError(message, self._span(pos, pos + 2))

    def _interpolation(self, pos: int) -> tuple[nodes.Interp, int]:
        colon, close = _interpolation_end(self.text, pos + 1)
        if close is None:
            message = "unclosed `{` in a string: write `{{` for a literal brace"
            raise SglSyntaxError(message, self._span(pos, pos + 1))
        expr_end = colon if colon is not None else close
        if not self.text[pos + 1 : expr_end].strip():
            message = "empty `{}` in a string: write `{{` and `}}` for literal braces"
            raise SglSyntaxError(message, self._span(pos, close + 1))
        expr = self._expression(self.origins[pos + 1], self.origins[expr_end - 1] + 1)
        spec = self.text[colon + 1 : close] if colon is not None else None
        return nodes.Interp(self._span(pos, close + 1), expr, spec), close + 1

    def _expression(self, start: int, end: int) -> nodes.Expr:
        """The expression at `start:end`; `{name}` and `{a.b}` skip the parser, for speed."""
        text = self.source.text[start:end]
        parts = text.split(".")
        if not _DOTTED_NAME.match(text) or KEYWORDS.intersection(parts):
            return self.parse_expr(self.source, start, end)
        expr: nodes.Expr = nodes.Name(self.source.span(start, start + len(parts[0])), parts[0])
        for part in parts[1:]:
            end = expr.span.end + 1 + len(part)
            expr = nodes.Attribute(self.source.span(start, end), expr, part)
        return expr


def _interpolation_end(text: str, pos: int) -> tuple[int | None, int | None]:
    """The positions of the format-spec colon and of the `}` closing an interpolation at `pos`."""
    depth = 0
    colon = None
    while pos < len(text):
        char = text[pos]
        if char in "\"'" and colon is None:
            end = text.find(char, pos + 1)
            pos = len(text) if end < 0 else end
        elif char in "([{":
            depth += 1
        elif char in ")]}" and depth:
            depth -= 1
        elif char == "}":
            return colon, pos
        elif char == ":" and colon is None and depth == 0:
            colon = pos
        pos += 1
    return colon, None


def _dedent(content: str, start: int) -> tuple[str, Sequence[int]]:
    """Drop a first line break, then the common indentation (like textwrap.dedent), keeping origins."""
    if content.startswith("\n"):
        content, start = content[1:], start + 1
    lines = content.split("\n")
    indents = [_INDENTATION.match(line).group() for line in lines]  # type: ignore[union-attr]
    margins = [
        indent for indent, line in zip(indents, lines, strict=True) if len(indent) < len(line)
    ]
    margin = len(_common_prefix(margins))
    text: list[str] = []
    origins: list[int] = []
    for indent, line in zip(indents, lines, strict=True):
        drop = len(line) if len(indent) == len(line) else margin
        text.append(line[drop:] + "\n")
        origins.extend(range(start + drop, start + len(line) + 1))
        start += len(line) + 1
    return "".join(text)[:-1], origins


def _common_prefix(strings: list[str]) -> str:
    if not strings:
        return ""
    low, high = min(strings), max(strings)
    size = 0
    while size < len(low) and low[size] == high[size]:
        size += 1
    return low[:size]


def _merge(parts: list[str | nodes.Interp]) -> tuple[str | nodes.Interp, ...]:
    """Join adjacent text parts and drop empty ones; a constant string keeps exactly one part."""
    merged: list[str | nodes.Interp] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return tuple(merged) or ("",)
