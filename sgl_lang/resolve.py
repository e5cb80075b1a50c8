"""Static checks before anything runs: names, structure, `gen` arguments, parameters.

What a backend enforces is checked separately, in `enforcement.py`."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from sgl_lang import nodes
from sgl_lang.errors import (
    SglError,
    SglImportError,
    SglNameError,
    SglSyntaxError,
    SglTypeError,
    SglValueError,
    SglWarning,
)
from sgl_lang.gen_args import GEN_ARGUMENTS, SELECT_ARGUMENTS, conflicting_constraints
from sgl_lang.stdlib import BUILTIN_NAMES, MODULE_NAMES


@dataclass
class _Scope:
    kind: str  # "module" | "function" | "branch" | "comp"
    names: dict[str, int]  # name -> offset of its first binding
    parent: _Scope | None = None
    start: int = 0  # where a branch's fork starts

    def visible(self) -> Iterator[str]:
        scope: _Scope | None = self
        while scope is not None:
            yield from scope.names
            scope = scope.parent

    def defines(self, name: str) -> bool:
        return any(name == visible for visible in self.visible())


@dataclass
class _Where:
    """What encloses the statement being checked."""

    scope: _Scope
    in_function: bool = False
    in_loop: bool = False
    in_role: bool = False
    in_fork: bool = False


@dataclass
class Checker:
    """Collects every problem of a program (not just the first)."""

    params: dict[str, Any] | None = None
    problems: list[SglError] = field(default_factory=list)

    def check(self, program: nodes.Program) -> list[SglError]:
        module = _Scope("module", _bound_names(program.body))
        self._block(program.body, _Where(module))
        if self.params is not None:
            self._check_params(program)
        return sorted(self.problems, key=lambda e: (e.span.start, e.kind) if e.span else (0, ""))

    def _report(self, error: SglError) -> None:
        self.problems.append(error)

    # ------------------------------------------------------------ statements

    def _block(self, body: tuple[nodes.Stmt, ...], where: _Where) -> None:
        for stmt in body:
            self._stmt(stmt, where)

    def _stmt(self, stmt: nodes.Stmt, where: _Where) -> None:
        match stmt:
            case nodes.Append(value=value) | nodes.ImageStmt(value=value):
                self._expr(value, where)
            case nodes.ExprStmt(expr=expr):
                self._expr(expr, where)
                self._check_effect(stmt)
            case nodes.Role():
                if where.in_role:
                    self._report(
                        SglSyntaxError(
                            f"a `{stmt.role}` message cannot be nested in another role message",
                            stmt.span,
                        )
                    )
                self._block(stmt.body, _replace(where, in_role=True))
            case nodes.Gen():
                self._gen(stmt, where)
            case nodes.Select():
                self._select(stmt, where)
            case nodes.Assign():
                self._assign(stmt, where)
            case nodes.AugAssign():
                self._expr(stmt.target, where)
                self._expr(stmt.value, where)
            case nodes.If():
                self._expr(stmt.test, where)
                self._block(stmt.body, where)
                self._block(stmt.orelse, where)
            case nodes.For():
                self._expr(stmt.iter, where)
                self._bind_in_branch(stmt.targets, stmt.span, where)
                self._block(stmt.body, _replace(where, in_loop=True))
            case nodes.While():
                self._expr(stmt.test, where)
                self._block(stmt.body, _replace(where, in_loop=True))
            case nodes.Break() | nodes.Continue():
                if not where.in_loop:
                    word = "break" if isinstance(stmt, nodes.Break) else "continue"
                    self._report(SglSyntaxError(f"`{word}` outside a loop", stmt.span))
            case nodes.Return():
                self._return(stmt, where)
            case nodes.Assert():
                self._expr(stmt.test, where)
                if stmt.message:
                    self._expr(stmt.message, where)
            case nodes.Fork():
                self._fork(stmt, where)
            case nodes.FuncDef():
                self._funcdef(stmt, where)
            case nodes.ParamDecl() | nodes.SchemaDecl() | nodes.Import() | nodes.BackendDecl():
                self._declaration(stmt, where)

    def _declaration(self, stmt: nodes.Stmt, where: _Where) -> None:
        if where.scope.kind != "module" or where.in_role:
            self._report(
                SglSyntaxError("declarations belong at the top level of a file", stmt.span)
            )
        if isinstance(stmt, nodes.ParamDecl) and stmt.default:
            self._expr(stmt.default, where)
        if isinstance(stmt, nodes.SchemaDecl):
            self._schema(stmt, where)
        if isinstance(stmt, nodes.Import) and stmt.module and stmt.module not in MODULE_NAMES:
            self._report(
                SglImportError(
                    f"no standard-library module named `{stmt.module}`",
                    stmt.span,
                    hint=_suggest(stmt.module, MODULE_NAMES),
                )
            )

    def _schema(self, stmt: nodes.SchemaDecl, where: _Where) -> None:
        seen: set[str] = set()
        for schema_field in stmt.fields:
            if schema_field.name in seen:
                self._report(
                    SglNameError(f"duplicate field `{schema_field.name}`", schema_field.span)
                )
            seen.add(schema_field.name)
            for named in _named_types(schema_field.type):
                if named.name not in ("str", "int", "float", "bool") and not where.scope.defines(
                    named.name
                ):
                    self._report(SglNameError(f"unknown type `{named.name}`", named.span))

    def _return(self, stmt: nodes.Return, where: _Where) -> None:
        if not where.in_function:
            self._report(SglSyntaxError("`return` outside a function", stmt.span))
        elif where.in_fork:
            self._report(
                SglSyntaxError(
                    "`return` cannot leave a fork branch",
                    stmt.span,
                    hint="bind a variable in the branch and read it from the branch list",
                )
            )
        if stmt.value:
            self._expr(stmt.value, where)

    def _assign(self, stmt: nodes.Assign, where: _Where) -> None:
        if isinstance(stmt.value, nodes.Fork):
            self._fork(stmt.value, where)
        else:
            self._expr(stmt.value, where)
        for target in stmt.targets:
            if isinstance(target, nodes.Name):
                self._bind_in_branch((target.id,), target.span, where)
            else:
                self._expr(target, where)

    def _bind_in_branch(self, names: tuple[str, ...], span: Any, where: _Where) -> None:
        """In a fork branch, binding a name of an enclosing scope is an error."""
        scope = where.scope
        if scope.kind != "branch":
            return
        for name in names:
            if _bound_outside(scope, name):
                self._report(
                    SglNameError(
                        f"a fork branch cannot rebind `{name}` from the enclosing scope; "
                        "bind a new name and read it from the branch",
                        span,
                    )
                )

    def _gen(self, stmt: nodes.Gen, where: _Where) -> None:
        self._bind_in_branch((stmt.name,), stmt.name_span, where)
        for kw in stmt.args:
            self._expr(kw.value, where)
            if kw.name is None:
                self._report(SglSyntaxError("`gen` arguments must be named", kw.span))
            elif kw.name not in GEN_ARGUMENTS:
                self._report(
                    SglTypeError(
                        f"`gen` has no argument `{kw.name}`",
                        kw.span,
                        hint=_suggest(kw.name, GEN_ARGUMENTS),
                    )
                )
        names = [kw.name for kw in stmt.args if kw.name]
        conflict = conflicting_constraints(names)
        if conflict:
            span = next(kw.span for kw in stmt.args if kw.name == conflict[1])
            self._report(
                SglValueError(f"`{conflict[0]}` and `{conflict[1]}` cannot be used together", span)
            )

    def _select(self, stmt: nodes.Select, where: _Where) -> None:
        self._bind_in_branch((stmt.name,), stmt.name_span, where)
        self._expr(stmt.choices, where)
        for kw in stmt.args:
            self._expr(kw.value, where)
            if kw.name not in SELECT_ARGUMENTS:
                self._report(SglTypeError(f"`select` has no argument `{kw.name}`", kw.span))

    def _fork(self, stmt: nodes.Fork, where: _Where) -> None:
        if where.in_role:
            self._report(SglSyntaxError("`fork` cannot be used inside a role message", stmt.span))
        if stmt.iter:
            self._expr(stmt.iter, where)
        if stmt.count:
            self._expr(stmt.count, where)
        names = _bound_names(stmt.body)
        if stmt.var:
            names[stmt.var] = stmt.span.start
        branch = _Scope("branch", names, where.scope, stmt.span.start)
        inner = _Where(branch, where.in_function, False, False, True)
        self._block(stmt.body, inner)

    def _funcdef(self, stmt: nodes.FuncDef, where: _Where) -> None:
        seen: set[str] = set()
        has_default = False
        for param in stmt.params:
            if param.name in seen:
                self._report(SglNameError(f"duplicate parameter `{param.name}`", param.span))
            seen.add(param.name)
            if param.default:
                has_default = True
                self._expr(param.default, where)
            elif has_default:
                self._report(
                    SglSyntaxError(
                        f"parameter `{param.name}` without a default follows one with a default",
                        param.span,
                    )
                )
        names = {param.name: param.span.start for param in stmt.params} | _bound_names(stmt.body)
        local = _Scope("function", names, where.scope)
        self._block(stmt.body, _Where(local, in_function=True))

    def _check_effect(self, stmt: nodes.ExprStmt) -> None:
        if any(isinstance(n, (nodes.Call, nodes.RunExpr)) for n in _walk(stmt.expr)):
            return
        hint = (
            f'write "{{{stmt.expr.id}}}" to append it'
            if isinstance(stmt.expr, nodes.Name)
            else 'write "{...}" around the expression to append it'
        )
        self._report(SglWarning("this expression has no effect", stmt.span, hint=hint))

    def _check_params(self, program: nodes.Program) -> None:
        for stmt in program.body:
            if not isinstance(stmt, nodes.ParamDecl) or stmt.default is not None:
                continue
            if self.params is not None and stmt.name not in self.params:
                self._report(
                    SglValueError(
                        f"param `{stmt.name}` has no default and no value was given",
                        stmt.span,
                        hint=f"pass one with --set {stmt.name}=VALUE",
                    )
                )

    # ------------------------------------------------------------ expressions

    def _expr(self, expr: nodes.Node, where: _Where) -> None:
        if isinstance(expr, nodes.Name):
            if expr.id not in BUILTIN_NAMES and not where.scope.defines(expr.id):
                candidates = set(where.scope.visible()) | BUILTIN_NAMES
                self._report(
                    SglNameError(
                        f"`{expr.id}` is not defined", expr.span, hint=_suggest(expr.id, candidates)
                    )
                )
            return
        if isinstance(expr, nodes.ListComp):
            self._expr(expr.iter, where)
            targets = dict.fromkeys(expr.targets, expr.span.start)
            comp = _Where(_Scope("comp", targets, where.scope), where.in_function)
            for part in (expr.elt, *expr.conditions):
                self._expr(part, comp)
            return
        for child in _children(expr):
            self._expr(child, where)


def check(program: nodes.Program, params: dict[str, Any] | None = None) -> list[SglError]:
    """Every problem in `program`, in source order; warnings are `SglWarning`s.

    `params`, when given, are the values the run will bind (so missing ones are reported).
    """
    return Checker(params).check(program)


# ---------------------------------------------------------------- helpers


def _replace(where: _Where, **changes: Any) -> _Where:
    return _Where(**{**where.__dict__, **changes})


def _bound_names(body: tuple[nodes.Stmt, ...]) -> dict[str, int]:
    """Names a block binds in its own scope (not in nested functions or fork branches), each
    with the offset of its first binding."""
    names: dict[str, int] = {}
    for stmt in body:
        bound: list[str] = []
        match stmt:
            case nodes.Assign(targets=targets):
                bound = [t.id for t in targets if isinstance(t, nodes.Name)]
            case nodes.Gen(name=name) | nodes.Select(name=name):
                bound = [name]
            case nodes.For(targets=targets):
                bound = list(targets)
            case (
                nodes.FuncDef(name=name) | nodes.ParamDecl(name=name) | nodes.SchemaDecl(name=name)
            ):
                bound = [name]
            case nodes.Import(alias=alias):
                bound = [alias]
        for name in bound:
            names.setdefault(name, stmt.span.start)
        for attr in ("body", "orelse"):
            if not isinstance(stmt, (nodes.FuncDef, nodes.Fork)) and hasattr(stmt, attr):
                for name, start in _bound_names(getattr(stmt, attr)).items():
                    names.setdefault(name, start)
    return names


def _bound_outside(branch: _Scope, name: str) -> bool:
    """Whether a branch binding `name` would rebind a name of an enclosing scope. Module
    names count only when bound before the fork (later ones cannot be meant)."""
    outer = branch.parent
    while outer is not None:
        if name in outer.names and (outer.kind != "module" or outer.names[name] < branch.start):
            return True
        outer = outer.parent
    return False


def _children(node: nodes.Node) -> Iterator[nodes.Node]:
    for f in fields(node):
        if f.name == "span":
            continue
        value = getattr(node, f.name)
        yield from _nodes_in(value)


def _nodes_in(value: Any) -> Iterator[nodes.Node]:
    if isinstance(value, nodes.Interp):
        yield value.expr
    elif isinstance(value, nodes.Keyword):
        yield value.value
    elif isinstance(value, nodes.Node):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _nodes_in(item)


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in _children(node):
        yield from _walk(child)


def _named_types(node: nodes.SchemaType) -> Iterator[nodes.NamedType]:
    if isinstance(node, nodes.NamedType):
        yield node
    elif isinstance(node, nodes.ListType):
        yield from _named_types(node.item)
    elif isinstance(node, nodes.DictType):
        yield from _named_types(node.value)


def _suggest(name: str, candidates: Any) -> str | None:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"did you mean `{close[0]}`?" if close else None
