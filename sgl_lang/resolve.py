"""Static checks before anything runs: names, structure, `gen` arguments, parameters.

Names are checked on the program's binding table (`bindings.py`); what a backend enforces is
checked separately, in `enforcement.py`."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sgl_lang import nodes
from sgl_lang.bindings import Binding, BindingTable, Scope, binding_table
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
from sgl_lang.user_grammars import grammar_error


@dataclass(frozen=True)
class _Where:
    """What encloses the statement being checked."""

    in_function: bool = False
    in_loop: bool = False
    in_role: bool = False
    in_fork: bool = False

    @property
    def at_top_level(self) -> bool:
        return not (self.in_function or self.in_fork)


@dataclass
class Checker:
    """Collects every problem of a program (not just the first)."""

    params: dict[str, Any] | None = None
    problems: list[SglError] = field(default_factory=list)

    def check(self, program: nodes.Program) -> list[SglError]:
        self._block(program.body, _Where())
        table = binding_table(program)
        self._check_uses(table)
        self._check_branch_bindings(table)
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
            case nodes.ExprStmt():
                self._check_effect(stmt)
            case nodes.Role():
                if where.in_role:
                    self._report(
                        SglSyntaxError(
                            f"a `{stmt.role}` message cannot be nested in another role message",
                            stmt.span,
                        )
                    )
                self._block(stmt.body, replace(where, in_role=True))
            case nodes.Gen():
                self._gen(stmt)
            case nodes.Select():
                self._select(stmt)
            case nodes.Assign(value=nodes.Fork() as fork):
                self._fork(fork, where)
            case nodes.If():
                self._block(stmt.body, where)
                self._block(stmt.orelse, where)
            case nodes.For() | nodes.While():
                self._block(stmt.body, replace(where, in_loop=True))
            case nodes.Break() | nodes.Continue():
                if not where.in_loop:
                    word = "break" if isinstance(stmt, nodes.Break) else "continue"
                    self._report(SglSyntaxError(f"`{word}` outside a loop", stmt.span))
            case nodes.Return():
                self._return(stmt, where)
            case nodes.Fork():
                self._fork(stmt, where)
            case nodes.FuncDef():
                self._funcdef(stmt)
            case nodes.ParamDecl() | nodes.SchemaDecl() | nodes.Import() | nodes.BackendDecl():
                self._declaration(stmt, where)

    def _declaration(self, stmt: nodes.Stmt, where: _Where) -> None:
        if not where.at_top_level or where.in_role:
            self._report(
                SglSyntaxError("declarations belong at the top level of a file", stmt.span)
            )
        if isinstance(stmt, nodes.SchemaDecl):
            self._schema(stmt)
        if isinstance(stmt, nodes.Import) and stmt.module and stmt.module not in MODULE_NAMES:
            self._report(
                SglImportError(
                    f"no standard-library module named `{stmt.module}`",
                    stmt.span,
                    hint=_suggest(stmt.module, MODULE_NAMES),
                )
            )

    def _schema(self, stmt: nodes.SchemaDecl) -> None:
        seen: set[str] = set()
        for schema_field in stmt.fields:
            if schema_field.name in seen:
                self._report(
                    SglNameError(f"duplicate field `{schema_field.name}`", schema_field.span)
                )
            seen.add(schema_field.name)

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

    def _gen(self, stmt: nodes.Gen) -> None:
        for kw in stmt.args:
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
        for kw in stmt.args:
            if kw.name == "grammar" and isinstance(kw.value, nodes.Str) and kw.value.is_constant:
                problem = grammar_error("".join(str(part) for part in kw.value.parts))
                if problem:
                    self._report(SglValueError(f"invalid grammar: {problem}", kw.span))
        names = [kw.name for kw in stmt.args if kw.name]
        conflict = conflicting_constraints(names)
        if conflict:
            span = next(kw.span for kw in stmt.args if kw.name == conflict[1])
            self._report(
                SglValueError(f"`{conflict[0]}` and `{conflict[1]}` cannot be used together", span)
            )

    def _select(self, stmt: nodes.Select) -> None:
        for kw in stmt.args:
            if kw.name not in SELECT_ARGUMENTS:
                self._report(SglTypeError(f"`select` has no argument `{kw.name}`", kw.span))

    def _fork(self, stmt: nodes.Fork, where: _Where) -> None:
        if where.in_role:
            self._report(SglSyntaxError("`fork` cannot be used inside a role message", stmt.span))
        self._block(stmt.body, _Where(in_function=where.in_function, in_fork=True))

    def _funcdef(self, stmt: nodes.FuncDef) -> None:
        seen: set[str] = set()
        has_default = False
        for param in stmt.params:
            if param.name in seen:
                self._report(SglNameError(f"duplicate parameter `{param.name}`", param.span))
            seen.add(param.name)
            if param.default:
                has_default = True
            elif has_default:
                self._report(
                    SglSyntaxError(
                        f"parameter `{param.name}` without a default follows one with a default",
                        param.span,
                    )
                )
        self._block(stmt.body, _Where(in_function=True))

    def _check_effect(self, stmt: nodes.ExprStmt) -> None:
        if any(isinstance(n, (nodes.Call, nodes.RunExpr)) for n in nodes.walk(stmt.expr)):
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

    # ------------------------------------------------------------ names

    def _check_uses(self, table: BindingTable) -> None:
        """Every name read must be bound in an enclosing scope or be a built-in; every schema
        type must name a schema."""
        for use in table.uses:
            if use.binding is not None:
                continue
            if isinstance(use.node, nodes.NamedType):
                self._report(SglNameError(f"unknown type `{use.name}`", use.node.span))
            elif use.name not in BUILTIN_NAMES:
                hint = _suggest(use.name, use.scope.visible() | BUILTIN_NAMES)
                self._report(SglNameError(f"`{use.name}` is not defined", use.node.span, hint=hint))

    def _check_branch_bindings(self, table: BindingTable) -> None:
        for scope in table.scopes:
            for binding in _rebindings(scope):
                # a `for` is reported on the statement, the others on the name
                span = binding.node.span if isinstance(binding.node, nodes.For) else binding.span
                self._report(
                    SglNameError(
                        f"a fork branch cannot rebind `{binding.name}` from the enclosing scope; "
                        "bind a new name and read it from the branch",
                        span,
                    )
                )


def check(program: nodes.Program, params: dict[str, Any] | None = None) -> list[SglError]:
    """Every problem in `program`, in source order; warnings are `SglWarning`s.

    `params`, when given, are the values the run will bind (so missing ones are reported).
    """
    return Checker(params).check(program)


# ---------------------------------------------------------------- helpers


def _rebindings(scope: Scope) -> Iterator[Binding]:
    """The bindings of a fork branch that rebind a name of an enclosing scope: by an assignment,
    a `for`, a `gen` or a `select` (the branch's own variable and its `def`s are not checked).
    Module names count only when bound before the fork (later ones cannot be meant)."""
    if not isinstance(scope.node, nodes.Fork) or scope.parent is None:
        return
    fork_start = scope.node.span.start
    for binding in scope.bindings:
        if not isinstance(binding.node, (nodes.Assign, nodes.For, nodes.Gen, nodes.Select)):
            continue
        for outer in scope.parent.chain():
            first = outer.names.get(binding.name)
            if first is not None and (outer.kind != "module" or first.span.start < fork_start):
                yield binding
                break


def _suggest(name: str, candidates: Any) -> str | None:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"did you mean `{close[0]}`?" if close else None
