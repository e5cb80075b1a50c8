"""The interpreter's run-time structures: scopes, the context statements run in, and the
signals that carry `break`, `continue` and `return` to where they land."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sgl_lang.bindings import ScopeKind
from sgl_lang.errors import Frame, SglError, SglNameError
from sgl_lang.source import Span
from sgl_lang.state import State


class Scope:
    """Variables of a module, a function call, a fork branch or a comprehension: at run time,
    one of the scopes of `bindings.py`."""

    __slots__ = ("kind", "parent", "vars")

    def __init__(self, kind: ScopeKind, parent: Scope | None = None) -> None:
        self.kind = kind
        self.parent = parent
        self.vars: dict[str, Any] = {}

    def find(self, name: str) -> Scope | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return scope
            scope = scope.parent
        return None

    def assign(self, name: str, value: Any) -> None:
        if self.kind == "branch" and name not in self.vars:
            owner = self.parent.find(name) if self.parent else None
            if (owner is not None and owner.kind != "module") or _branch_sees_global(self, name):
                raise SglNameError(
                    f"a fork branch cannot rebind `{name}` from the enclosing scope; "
                    "bind a new name and read it from the branch"
                )
        self.vars[name] = value


def _branch_sees_global(scope: Scope, name: str) -> bool:
    """True when the branch was forked at module level and `name` is a module variable."""
    parent = scope.parent
    while parent is not None and parent.kind in ("branch", "comp"):
        parent = parent.parent
    return parent is not None and parent.kind == "module" and name in parent.vars


@dataclass(frozen=True)
class Context:
    """Where statements run: the state they append to and the scope they bind in."""

    state: State
    scope: Scope
    stack: tuple[Frame, ...] = ()
    in_role: bool = False
    streams: bool = True
    importing: bool = False


class BreakLoop(Exception):
    """`break`, on its way to the loop."""


class ContinueLoop(Exception):
    """`continue`, on its way to the loop."""


class ReturnValue(Exception):
    """`return`, on its way to the call, with the value."""

    def __init__(self, value: Any) -> None:
        self.value = value


def located(error: SglError, span: Span, ctx: Context) -> SglError:
    """Give an error its innermost location and the `.sgl` call stack where it was raised."""
    if error.span is None:
        error.span = span
    if not error.stack:
        error.stack = ctx.stack
    return error


def scope_chain(scope: Scope | None) -> list[Scope]:
    chain = []
    while scope is not None:
        chain.append(scope)
        scope = scope.parent
    return chain[::-1]
