"""Static prefix analysis: the constant text a program or function appends before anything varies.

`sgl run --batch` and `run_batch` run one body many times with different inputs. The text the
body appends before its first input-dependent statement is the same for every run, so it is sent
to the backend once (`Backend.cache_prefix`) before the runs are dispatched.

The analysis reads the AST only. It walks the body in order, evaluating what it can without a
backend: literals, strings whose interpolations are known, names assigned from known values,
`for` loops over known lists (unrolled) and `if`s with known tests. It stops at the first
statement whose effect on the prompt it cannot know: a `gen`/`select`, text that interpolates a
param, an argument or a generated value, a call, a `fork`. A string that starts with constant
text and then interpolates an unknown value contributes its constant start. Stopping early is
always safe: the prefix is a hint that never changes a result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

from sgl_lang import nodes
from sgl_lang.bindings import binding_table
from sgl_lang.errors import SglError
from sgl_lang.objects import format_value
from sgl_lang.operators import binary, compare, iterate
from sgl_lang.protocol import Prompt
from sgl_lang.source import Span
from sgl_lang.state import State
from sgl_lang.values import to_str

MAX_UNROLLED = 1000  # loop iterations the analysis follows before it gives up
MUTATING_METHODS = frozenset({"append", "extend", "pop", "insert", "remove"})


class StaticPrefix(NamedTuple):
    """The constant leading prompt of a body, and where the analysis stopped (None: the body
    appends only constant text)."""

    prompt: Prompt
    stop: Span | None

    @property
    def is_empty(self) -> bool:
        return not self.prompt.segments


def program_prefix(program: nodes.Program) -> StaticPrefix:
    """The constant leading prompt of a program's main body (its params vary per run)."""
    return _Walker({}).prefix(program.body)


def row_prefix(program: nodes.Program, params: dict[str, Any]) -> StaticPrefix:
    """The leading prompt of a program's main body with its `param`s set to `params` (one
    batch row's): rows with equal row prefixes share that much of their prompts."""
    return _Walker({}, params).prefix(program.body)


def function_prefix(func: nodes.FuncDef, program: nodes.Program | None) -> StaticPrefix:
    """The constant leading prompt of `func` run on a fresh state (its arguments vary per run).
    `program` is the file that defines `func` at top level, whose constants it may read."""
    constants = module_constants(program) if program and func in program.body else {}
    for param in func.params:
        constants.pop(param.name, None)
    return _Walker(constants).prefix(func.body)


def module_constants(program: nodes.Program) -> dict[str, Any]:
    """Names bound exactly once in the whole program, by a top-level assignment of a known value,
    and never mutated (`xs.append(...)`): functions may read them as constants.

    A binding of the name in any scope counts (conservatively), but a comprehension's variable,
    gone when the comprehension ends."""
    num_bindings = Counter(
        binding.name
        for scope in binding_table(program).scopes
        if scope.kind != "comp"
        for binding in scope.bindings
    )
    mutated = _mutated_names(program)
    walker = _Walker({})
    constants: dict[str, Any] = {}
    for stmt in program.body:
        if (
            isinstance(stmt, nodes.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], nodes.Name)
            and num_bindings[stmt.targets[0].id] == 1
            and stmt.targets[0].id not in mutated
            and not isinstance(stmt.value, nodes.Fork)
        ):
            walker.env = constants
            value = walker.value(stmt.value)
            if value is not _UNKNOWN:
                constants[stmt.targets[0].id] = value
    return constants


# ---------------------------------------------------------------- the walk


class _Stop(Exception):
    def __init__(self, span: Span) -> None:
        self.span = span


_UNKNOWN: Any = object()


class _Walker:
    """Appends what a body certainly appends to a `State`, until it cannot know."""

    def __init__(self, env: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self.env = dict(env)
        self.params = params or {}  # the values of `param` statements, when known
        self.state = State()
        self.num_iterations = 0

    def prefix(self, body: Sequence[nodes.Stmt]) -> StaticPrefix:
        try:
            self.block(body)
        except _Stop as stop:
            return StaticPrefix(self.state.prompt(), stop.span)
        return StaticPrefix(self.state.prompt(), None)

    def block(self, body: Sequence[nodes.Stmt]) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, stmt: nodes.Stmt) -> None:
        if isinstance(stmt, nodes.Append):
            self.append(stmt.value)
        elif isinstance(stmt, nodes.Role):
            self.state.open_message(stmt.role)
            self.block(stmt.body)  # a stop inside leaves the message open, as it is then
            self.state.close_message()
        elif isinstance(stmt, nodes.Assign) and not isinstance(stmt.value, nodes.Fork):
            value = self.value(stmt.value)
            for target in stmt.targets:
                self.env.pop(_base_name(target), None)
            target = stmt.targets[0]
            if len(stmt.targets) == 1 and isinstance(target, nodes.Name) and value is not _UNKNOWN:
                self.env[target.id] = value
        elif isinstance(stmt, nodes.AugAssign):
            self.env.pop(_base_name(stmt.target), None)
        elif isinstance(stmt, nodes.For):
            self.unroll(stmt)
        elif isinstance(stmt, nodes.If):
            test = self.value(stmt.test)
            if test is _UNKNOWN:
                raise _Stop(stmt.span)
            self.block(stmt.body if test else stmt.orelse)
        elif isinstance(stmt, nodes.ParamDecl) and stmt.name in self.params:
            self.env[stmt.name] = self.params[stmt.name]
        elif isinstance(stmt, (nodes.FuncDef, nodes.ParamDecl, nodes.SchemaDecl)):
            self.env.pop(stmt.name, None)
        elif isinstance(stmt, nodes.Import):
            self.env.pop(stmt.alias, None)
        elif not isinstance(stmt, (nodes.Pass, nodes.BackendDecl)):
            raise _Stop(stmt.span)  # gen, select, image, calls, fork, loops we cannot follow

    def append(self, expr: nodes.Expr) -> None:
        if isinstance(expr, nodes.Str):  # its constant start counts even if the rest does not
            for part in expr.parts:
                text = part if isinstance(part, str) else self.interpolation(part)
                if text is _UNKNOWN:
                    raise _Stop(part.span if isinstance(part, nodes.Interp) else expr.span)
                self.state.append(text)
            return
        value = self.value(expr)
        if value is _UNKNOWN:
            raise _Stop(expr.span)
        self.state.append(to_str(value))

    def unroll(self, stmt: nodes.For) -> None:
        items = self.value(stmt.iter)
        try:
            items = _UNKNOWN if items is _UNKNOWN else iterate(items)
        except SglError:
            items = _UNKNOWN
        if items is _UNKNOWN or any(
            isinstance(node, (nodes.Break, nodes.Continue)) for node in nodes.walk(*stmt.body)
        ):
            raise _Stop(stmt.span)
        for item in items:
            self.num_iterations += 1
            if self.num_iterations > MAX_UNROLLED:
                raise _Stop(stmt.span)
            if len(stmt.targets) == 1:
                self.env[stmt.targets[0]] = item
            elif isinstance(item, list) and len(item) == len(stmt.targets):
                self.env.update(zip(stmt.targets, item, strict=True))
            else:
                raise _Stop(stmt.span)
            self.block(stmt.body)

    # -- values

    def interpolation(self, part: nodes.Interp) -> Any:
        value = self.value(part.expr)
        if value is _UNKNOWN:
            return _UNKNOWN
        try:
            return format_value(value, part.spec)
        except SglError:
            return _UNKNOWN

    def value(self, expr: nodes.Expr) -> Any:
        """The value of `expr` when it is known without running anything, else `_UNKNOWN`."""
        try:
            return self._value(expr)
        except (SglError, LookupError, TypeError, ValueError):
            return _UNKNOWN

    def _value(self, expr: nodes.Expr) -> Any:
        if isinstance(expr, nodes.Const):
            return expr.value
        if isinstance(expr, nodes.Str):
            parts = [p if isinstance(p, str) else self.interpolation(p) for p in expr.parts]
            return _UNKNOWN if _UNKNOWN in parts else "".join(parts)
        if isinstance(expr, nodes.Name):
            return self.env.get(expr.id, _UNKNOWN)
        if isinstance(expr, nodes.ListExpr):
            items = [self._value(item) for item in expr.items]
            return _UNKNOWN if _UNKNOWN in items else items
        if isinstance(expr, nodes.DictExpr):
            pairs = [(self._value(k), self._value(v)) for k, v in expr.items]
            known = all(k is not _UNKNOWN and v is not _UNKNOWN for k, v in pairs)
            return dict(pairs) if known else _UNKNOWN
        if isinstance(expr, nodes.Attribute):  # `shot.q` reads a dict key
            value = self._value(expr.value)
            return value[expr.attr] if isinstance(value, dict) else _UNKNOWN
        if isinstance(expr, nodes.Index) and not isinstance(expr.index, nodes.Slice):
            value, index = self._value(expr.value), self._value(expr.index)
            if value is _UNKNOWN or index is _UNKNOWN or isinstance(index, bool):
                return _UNKNOWN
            return value[index]
        if isinstance(expr, nodes.BinOp):
            left, right = self._value(expr.left), self._value(expr.right)
            return _UNKNOWN if _UNKNOWN in (left, right) else binary(expr.op, left, right)
        if isinstance(expr, nodes.Compare):
            values = [self._value(expr.left), *(self._value(c) for c in expr.comparators)]
            if _UNKNOWN in values:
                return _UNKNOWN
            steps = zip(expr.ops, values, values[1:], strict=False)
            return all(compare(op, a, b) for op, a, b in steps)
        if isinstance(expr, nodes.UnaryOp) and expr.op == "not":
            value = self._value(expr.operand)
            return _UNKNOWN if value is _UNKNOWN else not value
        return _UNKNOWN


# ---------------------------------------------------------------- names


def _mutated_names(program: nodes.Program) -> set[str]:
    """The names whose values the program changes in place: `x[i] = v`, `x.k = v`, `x += v`,
    `x.append(v)` and the other mutating methods."""
    mutated: set[str] = set()
    for node in nodes.walk(*program.body):
        if isinstance(node, nodes.Assign):
            mutated.update(_base_name(t) for t in node.targets if not isinstance(t, nodes.Name))
        elif isinstance(node, nodes.AugAssign):
            mutated.add(_base_name(node.target))
        elif (
            isinstance(node, nodes.Call)
            and isinstance(node.func, nodes.Attribute)
            and node.func.attr in MUTATING_METHODS
        ):
            mutated.add(_base_name(node.func.value))
    return mutated


def _base_name(target: nodes.Expr) -> str:
    """`x` for `x`, `x[i]`, `x.k`, `x[i].k`; "" when there is no such name."""
    while isinstance(target, (nodes.Index, nodes.Attribute)):
        target = target.value
    return target.id if isinstance(target, nodes.Name) else ""
