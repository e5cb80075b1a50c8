"""The binding table: a program's scopes, the names each binds, and what every name use refers to.

The scoping rules (docs/language.md, "Control flow, functions, scoping" and "`fork`"): the module,
each `def`, each `fork` branch and each list comprehension is a scope; the blocks of `if`, `for`,
`while` and role messages are not. A name bound anywhere in a scope belongs to all of it (the
rule is static, like Python's, not a flow analysis), and a use refers to the innermost enclosing
scope that binds the name. A `def`'s defaults, a `fork`'s items and a comprehension's iterable
are evaluated in the enclosing scope.

The table is built once per program (`binding_table`): `resolve` computes its name checks from
it, the language server its hover, definitions, outline and completion, `prefix` its constants.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, NamedTuple, TypeAlias

from sgl_lang import nodes
from sgl_lang.source import Span

ScopeKind: TypeAlias = Literal["module", "function", "branch", "comp"]
BindingKind: TypeAlias = Literal[
    "function", "argument", "schema", "param", "import", "variable", "generated", "loop"
]
ScopeNode: TypeAlias = nodes.FuncDef | nodes.Fork | nodes.ListComp


@dataclass(frozen=True, eq=False)
class Binding:
    """One place where a name is bound.

    `kind`: function (a `def`), argument (a parameter of a `def`), schema, param (a program
    input), import, variable (an assignment), generated (by a `gen` or a `select`) or loop (the
    variable of a `for`, a `fork` or a comprehension). `span` is the name where it is bound;
    `node` is what binds it: the statement, the `Param` of a `def`, or the `Fork` or `ListComp`
    whose variable it is.
    """

    name: str
    kind: BindingKind
    span: Span
    node: nodes.Node


@dataclass(eq=False)
class Scope:
    """The module, a `def`, a `fork` branch or a comprehension, and its bindings in source order.

    `node` is the FuncDef, Fork or ListComp (None for the module); `parent` the enclosing scope.
    Filled while the table is built, read-only afterwards.
    """

    kind: ScopeKind
    node: ScopeNode | None
    parent: Scope | None
    bindings: list[Binding] = field(default_factory=list)

    @cached_property
    def names(self) -> dict[str, Binding]:
        """The first binding of each name bound here, in source order."""
        first: dict[str, Binding] = {}
        for binding in self.bindings:
            first.setdefault(binding.name, binding)
        return first

    def chain(self) -> Iterator[Scope]:
        """This scope, then those enclosing it, innermost first."""
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    def lookup(self, name: str) -> Binding | None:
        """What `name` refers to here: its first binding in the innermost scope of the chain
        that binds it; None for a built-in or an undefined name."""
        return next((scope.names[name] for scope in self.chain() if name in scope.names), None)

    def visible(self) -> set[str]:
        """The names bound here or in an enclosing scope."""
        return {name for scope in self.chain() for name in scope.names}

    def contains(self, offset: int) -> bool:
        """Whether the text of this scope contains `offset` (the module's contains all)."""
        return self.node is None or self.node.span.start <= offset <= self.node.span.end


class Use(NamedTuple):
    """A name read: a `Name` in an expression, or a schema field's type naming another schema.
    `binding` is what it refers to; None for a built-in or an undefined name."""

    node: nodes.Name | nodes.NamedType
    scope: Scope
    binding: Binding | None

    @property
    def name(self) -> str:
        return self.node.id if isinstance(self.node, nodes.Name) else self.node.name


@dataclass(frozen=True)
class BindingTable:
    """Every scope of a program (the module first, each before the scopes nested in it) and
    every name use, in source order."""

    scopes: tuple[Scope, ...]
    uses: tuple[Use, ...]

    @property
    def module(self) -> Scope:
        return self.scopes[0]

    def scope_at(self, offset: int) -> Scope:
        """The innermost scope whose text contains `offset`."""
        return [scope for scope in self.scopes if scope.contains(offset)][-1]

    def use_at(self, offset: int) -> Use | None:
        """The name use whose text contains `offset` (its end included), if any."""
        spans = ((use, use.node.span) for use in self.uses)
        return next((use for use, span in spans if span.start <= offset <= span.end), None)


_TABLES: weakref.WeakKeyDictionary[nodes.Program, BindingTable] = weakref.WeakKeyDictionary()


def binding_table(program: nodes.Program) -> BindingTable:
    """The binding table of `program`, built on the first request and kept while the program
    lives (programs are immutable)."""
    table = _TABLES.get(program)
    if table is None:
        table = _TABLES[program] = _Builder().build(program)
    return table


def name_span(span: Span, name: str, after: int = 0) -> Span:
    """The span of the word `name` in `span`, searched from `after` characters in (the first
    `len(name)` characters of `span` when it is not there)."""
    found = re.compile(rf"\b{re.escape(name)}\b").search(span.source.text, span.start + after)
    start = found.start() if found and found.start() < span.end else span.start
    return span.source.span(start, start + len(name))


# ---------------------------------------------------------------- building


class _Builder:
    """One walk over a program: opens its scopes, records bindings and the names read."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.reads: list[Use] = []

    def build(self, program: nodes.Program) -> BindingTable:
        module = self._open("module", None, None)
        for stmt in program.body:
            self._visit(stmt, module)
        # resolved only now: a name may be read before the statement that binds it
        uses = (read._replace(binding=read.scope.lookup(read.name)) for read in self.reads)
        return BindingTable(tuple(self.scopes), tuple(uses))

    def _open(self, kind: ScopeKind, node: ScopeNode | None, parent: Scope | None) -> Scope:
        scope = Scope(kind, node, parent)
        self.scopes.append(scope)
        return scope

    def _visit(self, node: nodes.Node, scope: Scope) -> None:
        """Record what `node` binds and reads, and visit its children (in the scope it opens)."""
        match node:
            case nodes.Name():
                self.reads.append(Use(node, scope, None))
            case nodes.NamedType() if not node.is_scalar:
                self.reads.append(Use(node, scope, None))
            case nodes.FuncDef():
                self._funcdef(node, scope)
            case nodes.Fork():
                self._fork(node, scope)
            case nodes.ListComp():
                self._comprehension(node, scope)
            case nodes.Assign():
                self._assign(node, scope)
            case _:
                for name, kind, span in _bound_by(node):
                    scope.bindings.append(Binding(name, kind, span, node))
                for child in nodes.children(node):
                    self._visit(child, scope)

    def _funcdef(self, func: nodes.FuncDef, scope: Scope) -> None:
        scope.bindings.append(Binding(func.name, "function", func.name_span, func))
        local = self._open("function", func, scope)
        for param in func.params:
            span = name_span(param.span, param.name)
            local.bindings.append(Binding(param.name, "argument", span, param))
            if param.default is not None:
                self._visit(param.default, scope)
        for stmt in func.body:
            self._visit(stmt, local)

    def _fork(self, fork: nodes.Fork, scope: Scope) -> None:
        branch = self._open("branch", fork, scope)
        if fork.var is not None:
            span = name_span(fork.span, fork.var, len("fork"))
            branch.bindings.append(Binding(fork.var, "loop", span, fork))
        for items in (fork.iter, fork.count):
            if items is not None:
                self._visit(items, scope)
        for stmt in fork.body:
            self._visit(stmt, branch)

    def _comprehension(self, comp: nodes.ListComp, scope: Scope) -> None:
        inner = self._open("comp", comp, scope)
        after_elt = comp.elt.span.end - comp.span.start
        for name in comp.targets:
            inner.bindings.append(
                Binding(name, "loop", name_span(comp.span, name, after_elt), comp)
            )
        self._visit(comp.elt, inner)
        self._visit(comp.iter, scope)
        for condition in comp.conditions:
            self._visit(condition, inner)

    def _assign(self, assign: nodes.Assign, scope: Scope) -> None:
        for target in assign.targets:
            if isinstance(target, nodes.Name):
                scope.bindings.append(Binding(target.id, "variable", target.span, assign))
            else:
                self._visit(target, scope)  # `x[i] = ...` reads `x` and `i`
        self._visit(assign.value, scope)


def _bound_by(node: nodes.Node) -> list[tuple[str, BindingKind, Span]]:
    """The names a `for`, `gen`, `select` or declaration binds in its own scope."""
    match node:
        case nodes.For():
            return [(name, "loop", name_span(node.span, name, len("for"))) for name in node.targets]
        case nodes.Gen() | nodes.Select():
            return [(node.name, "generated", node.name_span)]
        case nodes.SchemaDecl():
            return [(node.name, "schema", node.name_span)]
        case nodes.ParamDecl():
            return [(node.name, "param", name_span(node.span, node.name, len("param")))]
        case nodes.Import():
            end = node.span.end
            return [(node.alias, "import", node.span.source.span(end - len(node.alias), end))]
    return []
