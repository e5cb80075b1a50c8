"""The AST: frozen dataclasses with spans, and `children`/`walk` to visit them. Built by `transform`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

from sgl_lang.source import Source, Span

# ---------------------------------------------------------------- base


@dataclass(frozen=True, eq=False)
class Node:
    """Every node knows where it came from."""

    span: Span


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, eq=False)
class Const(Node):
    """A number, `true`/`false` or `none`."""

    value: int | float | bool | None


@dataclass(frozen=True, eq=False)
class Interp(Node):
    """`{expr}` or `{expr:spec}` inside a string; `spec` is the format spec after the colon."""

    expr: Expr
    spec: str | None


@dataclass(frozen=True, eq=False)
class Str(Node):
    """A string literal: literal text and interpolations in order. Raw strings have one text part."""

    parts: tuple[str | Interp, ...]

    @property
    def is_constant(self) -> bool:
        return all(isinstance(part, str) for part in self.parts)


@dataclass(frozen=True, eq=False)
class Name(Node):
    id: str


@dataclass(frozen=True, eq=False)
class ListExpr(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class DictExpr(Node):
    items: tuple[tuple[Expr, Expr], ...]


@dataclass(frozen=True, eq=False)
class UnaryOp(Node):
    """`-x`, `+x` or `not x`; `op` is "-", "+" or "not"."""

    op: str
    operand: Expr


@dataclass(frozen=True, eq=False)
class BinOp(Node):
    """Arithmetic: `op` is one of "+ - * / // %"."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, eq=False)
class BoolOp(Node):
    """`left and right` / `left or right` (short-circuit, Python's value semantics)."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, eq=False)
class Compare(Node):
    """A comparison chain `a < b <= c`: ops are "== != < <= > >= in not in"."""

    left: Expr
    ops: tuple[str, ...]
    comparators: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class IfExpr(Node):
    """`body if test else orelse`."""

    test: Expr
    body: Expr
    orelse: Expr


@dataclass(frozen=True, eq=False)
class Slice(Node):
    """`lower:upper:step` inside brackets; missing parts are None."""

    lower: Expr | None
    upper: Expr | None
    step: Expr | None


@dataclass(frozen=True, eq=False)
class Index(Node):
    """`value[index]`; `index` is a Slice for `x[a:b]`."""

    value: Expr
    index: Expr | Slice


@dataclass(frozen=True, eq=False)
class Attribute(Node):
    value: Expr
    attr: str


@dataclass(frozen=True, eq=False)
class Keyword(Node):
    """`name=value` in a call or a `gen`/`select` argument list; `name` None means `**value`."""

    name: str | None
    value: Expr


@dataclass(frozen=True, eq=False)
class Call(Node):
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]


@dataclass(frozen=True, eq=False)
class ListComp(Node):
    """`[elt for targets in iter if cond ...]`; several targets unpack each item."""

    elt: Expr
    targets: tuple[str, ...]
    iter: Expr
    conditions: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class RunExpr(Node):
    """`run f(args)`: call `f` on a fresh, empty state; the value is that state."""

    call: Call


Expr: TypeAlias = (
    Const
    | Str
    | Name
    | ListExpr
    | DictExpr
    | UnaryOp
    | BinOp
    | BoolOp
    | Compare
    | IfExpr
    | Index
    | Attribute
    | Call
    | ListComp
    | RunExpr
)

# ---------------------------------------------------------------- prompt statements


@dataclass(frozen=True, eq=False)
class Append(Node):
    """Append `str(value)` to the current state. A string literal statement is an Append of a Str."""

    value: Expr


@dataclass(frozen=True, eq=False)
class Role(Node):
    """A chat message of `role` ("system", "user", "assistant") whose content is what `body` appends.

    The line forms map onto it: `user E` is `Role("user", (Append(E),))`,
    `assistant gen x(...)` is `Role("assistant", (Gen(...),))`. `inline` is True for line forms.
    """

    role: str
    body: tuple[Stmt, ...]
    inline: bool


@dataclass(frozen=True, eq=False)
class Gen(Node):
    """`gen name(args)`: generate, append and bind `name`. Arguments are checked by `resolve`."""

    name: str
    name_span: Span
    args: tuple[Keyword, ...]


@dataclass(frozen=True, eq=False)
class Select(Node):
    """`select name(args) from choices`."""

    name: str
    name_span: Span
    args: tuple[Keyword, ...]
    choices: Expr


@dataclass(frozen=True, eq=False)
class ImageStmt(Node):
    """`image E`: append an image (a path, an URL or bytes)."""

    value: Expr


# ---------------------------------------------------------------- other statements


@dataclass(frozen=True, eq=False)
class ExprStmt(Node):
    """An expression evaluated for its effects only; its value is not appended."""

    expr: Expr


@dataclass(frozen=True, eq=False)
class Assign(Node):
    """`target = value`; a target is a Name, an Index or a tuple of Names (`a, b = ...`)."""

    targets: tuple[Name | Index | Attribute, ...]
    value: Expr | Fork


@dataclass(frozen=True, eq=False)
class AugAssign(Node):
    """`target op= value` with op one of "+ - * / // %"."""

    target: Name | Index
    op: str
    value: Expr


@dataclass(frozen=True, eq=False)
class If(Node):
    """`if`/`elif`/`else`: an `elif` is an If alone in `orelse`."""

    test: Expr
    body: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@dataclass(frozen=True, eq=False)
class For(Node):
    targets: tuple[str, ...]
    iter: Expr
    body: tuple[Stmt, ...]


@dataclass(frozen=True, eq=False)
class While(Node):
    test: Expr
    body: tuple[Stmt, ...]


@dataclass(frozen=True, eq=False)
class Break(Node):
    pass


@dataclass(frozen=True, eq=False)
class Continue(Node):
    pass


@dataclass(frozen=True, eq=False)
class Pass(Node):
    pass


@dataclass(frozen=True, eq=False)
class Assert(Node):
    test: Expr
    message: Expr | None


@dataclass(frozen=True, eq=False)
class Return(Node):
    value: Expr | None


@dataclass(frozen=True, eq=False)
class Fork(Node):
    """`fork var in iter:` or `fork count:`; as the value of an Assign it binds the branch list.

    Exactly one of `iter` and `count` is set; `var` is None for the count form.
    """

    var: str | None
    iter: Expr | None
    count: Expr | None
    body: tuple[Stmt, ...]


@dataclass(frozen=True, eq=False)
class Param(Node):
    """A function parameter, with an optional default."""

    name: str
    default: Expr | None


@dataclass(frozen=True, eq=False)
class FuncDef(Node):
    name: str
    name_span: Span
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    doc: str | None


@dataclass(frozen=True, eq=False)
class ParamDecl(Node):
    """`param name [= default]`: a program input."""

    name: str
    default: Expr | None


# Schema field types
@dataclass(frozen=True, eq=False)
class NamedType(Node):
    """`str`, `int`, `float`, `bool`, or the name of another schema."""

    name: str

    @property
    def is_scalar(self) -> bool:
        return self.name in ("str", "int", "float", "bool")


@dataclass(frozen=True, eq=False)
class ListType(Node):
    item: SchemaType


@dataclass(frozen=True, eq=False)
class DictType(Node):
    """`dict[str, T]`: keys are always strings."""

    value: SchemaType


@dataclass(frozen=True, eq=False)
class EnumType(Node):
    """`"a" | "b" | "c"`."""

    options: tuple[str, ...]


SchemaType: TypeAlias = NamedType | ListType | DictType | EnumType


@dataclass(frozen=True, eq=False)
class SchemaField(Node):
    name: str
    type: SchemaType
    optional: bool


@dataclass(frozen=True, eq=False)
class SchemaDecl(Node):
    name: str
    name_span: Span
    fields: tuple[SchemaField, ...]


@dataclass(frozen=True, eq=False)
class Import(Node):
    """`import "path.sgl" as alias` (path set) or `import module [as alias]` (module set)."""

    path: str | None
    module: str | None
    alias: str


@dataclass(frozen=True, eq=False)
class BackendDecl(Node):
    uri: str


Stmt: TypeAlias = (
    Append
    | Role
    | Gen
    | Select
    | ImageStmt
    | ExprStmt
    | Assign
    | AugAssign
    | If
    | For
    | While
    | Break
    | Continue
    | Pass
    | Assert
    | Return
    | Fork
    | FuncDef
    | ParamDecl
    | SchemaDecl
    | Import
    | BackendDecl
)


@dataclass(frozen=True, eq=False)
class Program:
    """A parsed file: its source and top-level statements."""

    source: Source
    body: tuple[Stmt, ...]


# ---------------------------------------------------------------- traversal


def children(node: Node) -> tuple[Node, ...]:
    """The nodes `node` holds directly (in its fields, or in tuples in them), in source order
    (which field order is not always: an `IfExpr` holds its test before its body)."""
    found = [child for f in fields(node) for child in _nodes_in(getattr(node, f.name))]
    return tuple(sorted(found, key=lambda child: child.span.start))


def walk(*roots: Node) -> Iterator[Node]:
    """Every node of the trees under `roots`, each before its children, in source order."""
    pending = list(reversed(roots))
    while pending:
        node = pending.pop()
        yield node
        pending.extend(reversed(children(node)))


def _nodes_in(value: Any) -> Iterator[Node]:
    if isinstance(value, Node):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _nodes_in(item)
