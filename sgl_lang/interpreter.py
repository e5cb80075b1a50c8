"""The eager, asynchronous tree walker: runs a program's statements on prompt states; fork/join."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sgl_lang import nodes
from sgl_lang.calls import (
    DEFAULT_NUM_RETRIES,
    CallRecord,
    Site,
    backend_errors,
    constraint_label,
    generate_checked,
)
from sgl_lang.errors import (
    Frame,
    SglAssertionError,
    SglError,
    SglImportError,
    SglNameError,
    SglSyntaxError,
    SglTypeError,
    SglValueError,
)
from sgl_lang.gen_args import GenArgs, check_gen_args, check_select_args, gen_meta
from sgl_lang.limits import DEFAULT_LIMITS, Limits, check_num_items, check_text_len, limit_error
from sgl_lang.limits import current as current_limits
from sgl_lang.objects import (
    Function,
    Record,
    Schema,
    check_error,
    format_value,
    get_attribute,
    schema_to_json,
)
from sgl_lang.operators import binary, compare, iterate, unpack
from sgl_lang.prefix import function_prefix
from sgl_lang.protocol import Backend, Choices, GenRequest, GenResult
from sgl_lang.scopes import (
    BreakLoop,
    Context,
    ContinueLoop,
    ReturnValue,
    Scope,
    located,
    scope_chain,
)
from sgl_lang.source import Span
from sgl_lang.state import State
from sgl_lang.stdlib import permissions
from sgl_lang.stdlib.builtins import BUILTINS
from sgl_lang.stdlib.modules import load_module
from sgl_lang.tool_calls import Tool, ToolRound, generate_with_tools, make_tool
from sgl_lang.values import to_repr, to_str, type_name

ProgramLoader = Callable[[nodes.Program, nodes.Import], nodes.Program]
"""Finds and parses the program an `import "path"` names (see `loader.py`)."""


class _ContextBuiltin:
    """A built-in that needs the interpreter (`run_batch`)."""

    type_name = "function"

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"<built-in {self.name}>"


META = _ContextBuiltin("meta")
RUN_BATCH = _ContextBuiltin("run_batch")


STEPS_PER_CHECK = 1_000
"""Statements and expressions run between two checks of the step and time limits; each check
also yields to the event loop, so that a cancellation (one Ctrl-C) stops a busy loop."""


class Interpreter:
    """Runs programs against one backend. Keeps every state and backend call for `--trace`.
    A constraint the backend cannot enforce is checked after the fact, and a `gen` whose
    output fails is retried up to `num_retries` times (see `calls.py`). `limits` bound what
    a run may build, its steps and its time (`limits.py`)."""

    def __init__(
        self,
        backend: Backend,
        *,
        params: dict[str, Any] | None = None,
        default_max_tokens: int = 256,
        max_recursion: int = 200,
        num_retries: int = DEFAULT_NUM_RETRIES,
        on_chunk: Callable[[str], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        load_program: ProgramLoader | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.num_steps = 0
        self._next_check = STEPS_PER_CHECK
        self._deadline: float | None = None
        self._stmt_span: Span | None = None  # of the statement that ran last
        self.params = dict(params or {})
        self.default_max_tokens = default_max_tokens
        self.max_recursion = max_recursion
        self.num_retries = num_retries
        self.on_chunk = on_chunk
        self.on_warning = on_warning
        self.load_program = load_program
        self.builtins: dict[str, Any] = {
            **BUILTINS,
            "meta": META,
            "run_batch": RUN_BATCH,
            "tool": make_tool,
        }
        self.states: list[State] = []
        self.calls: list[CallRecord] = []
        self.scope = Scope("module")
        self.program: nodes.Program | None = None
        self._modules: dict[str, Record] = {}
        self._warned: set[str] = set()
        self._exec: dict[type, Callable[[Any, Context], Any]] = {
            nodes.Append: self._append,
            nodes.Role: self._role,
            nodes.Gen: self._gen,
            nodes.Select: self._select,
            nodes.ImageStmt: self._image,
            nodes.ExprStmt: self._expr_stmt,
            nodes.Assign: self._assign,
            nodes.AugAssign: self._aug_assign,
            nodes.If: self._if,
            nodes.For: self._for,
            nodes.While: self._while,
            nodes.Break: self._break,
            nodes.Continue: self._continue,
            nodes.Pass: self._pass,
            nodes.Assert: self._assert,
            nodes.Return: self._return,
            nodes.Fork: self._fork,
            nodes.FuncDef: self._funcdef,
            nodes.ParamDecl: self._param,
            nodes.SchemaDecl: self._schema,
            nodes.Import: self._import,
            nodes.BackendDecl: self._pass,
        }
        self._eval: dict[type, Callable[[Any, Context], Any]] = {
            nodes.Str: self._str,
            nodes.Name: self._name,
            nodes.ListExpr: self._list,
            nodes.DictExpr: self._dict,
            nodes.UnaryOp: self._unary,
            nodes.BinOp: self._binop,
            nodes.BoolOp: self._boolop,
            nodes.Compare: self._compare,
            nodes.IfExpr: self._ifexpr,
            nodes.Index: self._index,
            nodes.Attribute: self._attribute,
            nodes.Call: self._call,
            nodes.ListComp: self._listcomp,
            nodes.RunExpr: self._run,
        }

    # ------------------------------------------------------------ entry points

    async def run_program(self, program: nodes.Program) -> State:
        """Run a program's main body on a fresh state; returns that state. Within the run's
        `timeout_s`, if any: a backend call still running then fails at its statement."""
        self.program = program
        # Each `.sgl` call nests a few dozen Python frames (coroutines included).
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 40 * self.max_recursion + 2000))
        state = State()
        self.states.append(state)
        ctx = Context(state, self.scope)
        token = current_limits.set(self.limits)
        timeout_s = self.limits.timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        timer = asyncio.timeout(timeout_s)
        try:
            async with timer:
                await self.exec_block(program.body, ctx)
        except TimeoutError:
            if not timer.expired():
                raise
            error = _timeout_error(self.limits)  # a backend call still running at the deadline
            raise (error.at(self._stmt_span) if self._stmt_span else error) from None
        finally:
            current_limits.reset(token)
        return state

    async def exec_block(self, body: Sequence[nodes.Stmt], ctx: Context) -> None:
        for stmt in body:
            try:
                self.num_steps += 1
                self._stmt_span = stmt.span
                if self.num_steps >= self._next_check:
                    await self._check_limits()
                await self._exec[type(stmt)](stmt, ctx)
            except SglError as error:
                raise located(error, stmt.span, ctx) from None

    async def eval(self, expr: nodes.Expr, ctx: Context) -> Any:
        if isinstance(expr, nodes.Const):
            return expr.value
        try:
            self.num_steps += 1
            if self.num_steps >= self._next_check:
                await self._check_limits()
            return await self._eval[type(expr)](expr, ctx)
        except SglError as error:
            raise located(error, expr.span, ctx) from None

    async def _check_limits(self) -> None:
        """Every `STEPS_PER_CHECK` steps (and at `max_steps`): the step and time limits, and a
        yield to the event loop, where a pending cancellation (Ctrl-C) is delivered."""
        max_steps = self.limits.max_steps
        if max_steps is not None and self.num_steps > max_steps:
            raise limit_error(
                f"the program ran more than {max_steps:,} steps "
                "(statements and expressions; max_steps)",
                "max_steps",
            )
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise _timeout_error(self.limits)
        self._next_check = self.num_steps + STEPS_PER_CHECK
        if max_steps is not None:
            self._next_check = min(self._next_check, max_steps + 1)
        await asyncio.sleep(0)

    # ------------------------------------------------------------ prompt statements

    async def _append(self, node: nodes.Append, ctx: Context) -> None:
        text = to_str(await self.eval(node.value, ctx))
        check_text_len(ctx.state.num_chars + len(text), "appending to the prompt")
        ctx.state.append(text)

    async def _role(self, node: nodes.Role, ctx: Context) -> None:
        if ctx.in_role:
            raise SglSyntaxError(
                f"a `{node.role}` message cannot be nested in another role message", node.span
            )
        ctx.state.open_message(node.role)
        try:
            await self.exec_block(node.body, replace(ctx, in_role=True))
        finally:
            ctx.state.close_message()

    async def _image(self, node: nodes.ImageStmt, ctx: Context) -> None:
        value = await self.eval(node.value, ctx)
        if not isinstance(value, (str, bytes)):
            raise SglTypeError(f"`image` needs a path, an URL or bytes, not `{type_name(value)}`")
        if isinstance(value, str):
            # The backend reads the file or hands the URL to its provider to fetch.
            is_url = value.startswith(("http://", "https://"))
            permissions.require("net" if is_url else "read", value, node.span)
        ctx.state.append_image(value)

    async def _gen(self, node: nodes.Gen, ctx: Context) -> None:
        self._check_can_generate(ctx, "gen")
        values = {kw.name: await self.eval(kw.value, ctx) for kw in node.args if kw.name}
        args = check_gen_args(node, values, self.builtins, self.default_max_tokens)
        if missing := self.backend.capabilities.missing_options(args.request):
            span = next(kw.span for kw in node.args if kw.name == missing[0])
            raise SglValueError(f"backend `{self.backend.name}` cannot honour `{missing[0]}`", span)
        site = Site("gen", node.name, node.span)
        if args.tools:
            result, value, rounds = await self._generate_with_tools(args, site, ctx)
        else:
            args = args._replace(request=replace(args.request, prompt=ctx.state.prompt()))
            (result, value), rounds = await self._generate(args, site, ctx), []
        ctx.state.append(result.text, generated=True)
        self._bind_generated(node.name, value, ctx)
        ctx.state.meta[node.name] = gen_meta(result, args.request)
        if args.tools:
            ctx.state.meta[node.name]["tool_calls"] = [
                {"name": r.call.name, "arguments": r.call.arguments, "result": r.result}
                for r in rounds
            ]

    async def _generate_with_tools(
        self, args: GenArgs, site: Site, ctx: Context
    ) -> tuple[GenResult, Any, list[ToolRound]]:
        """`tool_calls.generate_with_tools`; each tool runs on a copy of the state (the calls
        and results are in the state, so `--trace` shows them)."""

        async def call_tool(tool: Tool, arguments: dict[str, Any]) -> Any:
            inner = replace(ctx, state=ctx.state.copy(), streams=False)
            return await self.call(tool.function, [], dict(arguments), inner, site.span)

        return await generate_with_tools(
            args, ctx.state, lambda a: self._generate(a, site, ctx), call_tool
        )

    async def _generate(self, args: GenArgs, site: Site, ctx: Context) -> tuple[GenResult, Any]:
        """The result of `args.request` and the value it binds (`calls.generate_checked`)."""
        if not self.backend.capabilities.enforces(args.request.constraint):
            self._warn_once(
                f"backend `{self.backend.name}` does not enforce `{constraint_label(args)}`: "
                f"each output is checked, and generated again (up to {self.num_retries} times) "
                "while it fails"
            )
        return await generate_checked(
            self.backend,
            args,
            site,
            calls=self.calls,
            num_retries=self.num_retries,
            on_chunk=self.on_chunk if ctx.streams else None,
        )

    async def _select(self, node: nodes.Select, ctx: Context) -> None:
        self._check_can_generate(ctx, "select")
        values = {kw.name: await self.eval(kw.value, ctx) for kw in node.args if kw.name}
        method = check_select_args(node, values)
        choices = await self.eval(node.choices, ctx)
        if not isinstance(choices, list) or not choices:
            raise SglTypeError(
                f"`select` needs a non-empty list of strings, not `{type_name(choices)}`"
            ).at(node.choices.span)
        if not all(isinstance(choice, str) for choice in choices):
            raise SglTypeError("`select` choices must all be strings").at(node.choices.span)
        site = Site("select", node.name, node.span)
        if method in self.backend.capabilities.select_methods:
            chosen, meta = await self._score_choices(choices, method, site, ctx)
        else:
            chosen, meta = await self._generate_choice(choices, site, ctx)
        ctx.state.append(chosen, generated=True)
        self._bind_generated(node.name, chosen, ctx)
        ctx.state.meta[node.name] = meta

    async def _score_choices(
        self, choices: list[str], method: str, site: Site, ctx: Context
    ) -> tuple[str, dict[str, Any]]:
        with backend_errors():
            scores = await self.backend.score(ctx.state.prompt(), choices, method)
        self.calls.append(CallRecord(site.kind, site.name, site.span, 0, 0, 0))
        chosen = choices[max(range(len(choices)), key=scores.__getitem__)]
        return chosen, {"method": method, "scores": dict(zip(choices, scores, strict=True))}

    async def _generate_choice(
        self, choices: list[str], site: Site, ctx: Context
    ) -> tuple[str, dict[str, Any]]:
        """`select` on a backend that cannot score: `gen … choices=` (not streamed)."""
        self._warn_once(
            f"backend `{self.backend.name}` cannot score choices; "
            "`select` falls back to constrained generation (gen … choices=)"
        )
        constraint = Choices(tuple(choices))
        request = GenRequest(ctx.state.prompt(), self.default_max_tokens, constraint=constraint)
        result, _ = await self._generate(GenArgs(request, None), site, replace(ctx, streams=False))
        return result.text, {"method": "generate", "scores": {}}

    def _check_can_generate(self, ctx: Context, what: str) -> None:
        if ctx.importing:
            raise SglImportError(
                f"an imported program cannot run `{what}` while it is being imported; "
                "only its declarations and constant assignments run"
            )

    def _bind_generated(self, name: str, value: Any, ctx: Context) -> None:
        ctx.scope.assign(name, value)
        ctx.state.variables[name] = value

    def _warn_once(self, message: str) -> None:
        if message not in self._warned and self.on_warning:
            self._warned.add(message)
            self.on_warning(message)

    # ------------------------------------------------------------ other statements

    async def _expr_stmt(self, node: nodes.ExprStmt, ctx: Context) -> None:
        await self.eval(node.expr, ctx)

    async def _assign(self, node: nodes.Assign, ctx: Context) -> None:
        if isinstance(node.value, nodes.Fork):
            value: Any = await self._run_fork(node.value, ctx)
        else:
            value = await self.eval(node.value, ctx)
        if len(node.targets) == 1:
            await self._store(node.targets[0], value, ctx)
            return
        items = unpack(value, len(node.targets))
        for target, item in zip(node.targets, items, strict=True):
            await self._store(target, item, ctx)

    async def _store(
        self, target: nodes.Name | nodes.Index | nodes.Attribute, value: Any, ctx: Context
    ) -> None:
        if isinstance(target, nodes.Name):
            try:
                ctx.scope.assign(target.id, value)
            except SglError as error:
                raise error.at(target.span) from None
            return
        container = await self.eval(target.value, ctx)
        if isinstance(target, nodes.Attribute):
            if not isinstance(container, dict):
                raise SglTypeError(
                    f"cannot set attributes of `{type_name(container)}`", target.span
                )
            _check_new_key(container, target.attr)
            container[target.attr] = value
            return
        key = await self.eval(_as_expr(target.index), ctx)
        if not isinstance(container, (list, dict)):
            raise SglTypeError(
                f"`{type_name(container)}` does not support item assignment", target.span
            )
        try:
            _check_new_key(container, key)
            container[key] = value
        except (IndexError, TypeError) as exc:
            raise check_error(exc).at(target.span) from None

    async def _aug_assign(self, node: nodes.AugAssign, ctx: Context) -> None:
        current = await self.eval(node.target, ctx)
        value = binary(node.op, current, await self.eval(node.value, ctx))
        await self._store(node.target, value, ctx)

    async def _if(self, node: nodes.If, ctx: Context) -> None:
        body = node.body if await self.eval(node.test, ctx) else node.orelse
        await self.exec_block(body, ctx)

    async def _for(self, node: nodes.For, ctx: Context) -> None:
        for item in iterate(await self.eval(node.iter, ctx)):
            self._bind_targets(node.targets, item, ctx.scope)
            try:
                await self.exec_block(node.body, ctx)
            except BreakLoop:
                break
            except ContinueLoop:
                continue

    async def _while(self, node: nodes.While, ctx: Context) -> None:
        while await self.eval(node.test, ctx):
            try:
                await self.exec_block(node.body, ctx)
            except BreakLoop:
                break
            except ContinueLoop:
                continue

    def _bind_targets(self, targets: tuple[str, ...], item: Any, scope: Scope) -> None:
        if len(targets) == 1:
            scope.assign(targets[0], item)
            return
        for name, value in zip(targets, unpack(item, len(targets)), strict=True):
            scope.assign(name, value)

    async def _break(self, node: nodes.Break, ctx: Context) -> None:
        raise BreakLoop

    async def _continue(self, node: nodes.Continue, ctx: Context) -> None:
        raise ContinueLoop

    async def _pass(self, node: nodes.Node, ctx: Context) -> None:
        return None

    async def _assert(self, node: nodes.Assert, ctx: Context) -> None:
        if not await self.eval(node.test, ctx):
            message = (
                to_str(await self.eval(node.message, ctx)) if node.message else "assertion failed"
            )
            raise SglAssertionError(message, node.span)

    async def _return(self, node: nodes.Return, ctx: Context) -> None:
        raise ReturnValue(await self.eval(node.value, ctx) if node.value else None)

    async def _fork(self, node: nodes.Fork, ctx: Context) -> None:
        await self._run_fork(node, ctx)

    async def _funcdef(self, node: nodes.FuncDef, ctx: Context) -> None:
        defaults = {p.name: await self.eval(p.default, ctx) for p in node.params if p.default}
        ctx.scope.assign(node.name, Function(node, ctx.scope, defaults))

    async def _param(self, node: nodes.ParamDecl, ctx: Context) -> None:
        if node.name in self.params and not ctx.importing:
            value = self.params[node.name]
        elif node.default is not None:
            value = await self.eval(node.default, ctx)
        else:
            raise SglValueError(
                f"param `{node.name}` has no default and no value was given",
                node.span,
                hint=f"pass one with --set {node.name}=VALUE",
            )
        ctx.scope.assign(node.name, value)

    async def _schema(self, node: nodes.SchemaDecl, ctx: Context) -> None:
        known = {
            name: value
            for scope in scope_chain(ctx.scope)
            for name, value in scope.vars.items()
            if isinstance(value, Schema)
        }
        ctx.scope.assign(node.name, Schema(node.name, schema_to_json(node, known)))

    async def _import(self, node: nodes.Import, ctx: Context) -> None:
        if node.module is not None:
            ctx.scope.assign(node.alias, load_module(node.module))
            return
        ctx.scope.assign(node.alias, await self._import_program(node, ctx))

    async def _import_program(self, node: nodes.Import, ctx: Context) -> Record:
        if self.load_program is None or node.path is None:
            raise SglImportError("importing program files is not available here", node.span)
        importer = ctx.state.program if isinstance(ctx.state, _ImportState) else self.program
        if importer is None:
            raise SglImportError("cannot tell which file this import is relative to", node.span)
        program = self.load_program(importer, node)
        key = program.source.name
        if key not in self._modules:
            scope = Scope("module")
            module_ctx = Context(_ImportState(program), scope, ctx.stack, importing=True)
            await self.exec_block([s for s in program.body if _runs_on_import(s)], module_ctx)
            self._modules[key] = Record("module", scope.vars)
        return self._modules[key]

    # ------------------------------------------------------------ fork and run

    async def _run_fork(self, node: nodes.Fork, ctx: Context) -> list[Record]:
        if ctx.in_role:
            raise SglSyntaxError("`fork` cannot be used inside a role message", node.span)
        items = await self._fork_items(node, ctx)
        if len(items) > 1:
            with backend_errors():
                await self.backend.cache_prefix(ctx.state.prompt())
        tasks = [asyncio.create_task(self._branch(node, item, ctx)) for item in items]
        if not tasks:
            return []
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for item, task in zip(items, tasks, strict=True):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise _branch_error(task.exception(), node, item)
        return [task.result() for task in tasks]

    async def _fork_items(self, node: nodes.Fork, ctx: Context) -> list[Any]:
        if node.count is not None:
            count = await self.eval(node.count, ctx)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise SglTypeError(f"`fork N:` needs a non-negative int, not {to_repr(count)}").at(
                    node.count.span
                )
            self._check_fork_width(count)
            return list(range(count))
        assert node.iter is not None
        items = iterate(await self.eval(node.iter, ctx))
        self._check_fork_width(len(items))
        return items

    def _check_fork_width(self, num_branches: int) -> None:
        limit = self.limits.max_fork_width
        if num_branches > limit:
            raise limit_error(
                f"`fork` of {num_branches:,} branches is over the limit of {limit:,} "
                "(max_fork_width)",
                "max_fork_width",
            )

    async def _branch(self, node: nodes.Fork, item: Any, ctx: Context) -> Record:
        state = ctx.state.copy()
        self.states.append(state)
        start = len(state.pieces)
        scope = Scope("branch", ctx.scope)
        if node.var:
            scope.vars[node.var] = item
        await self.exec_block(node.body, replace(ctx, state=state, scope=scope, streams=False))
        attributes = {
            name: value
            for name, value in state.variables.items()
            if ctx.state.variables.get(name, _MISSING) is not value
        }
        attributes.update(scope.vars)
        attributes["text"] = state.text(start)
        return Record("branch", attributes)

    async def _run(self, node: nodes.RunExpr, ctx: Context) -> Record:
        func = await self.eval(node.call.func, ctx)
        if not isinstance(func, Function):
            raise SglTypeError(
                f"`run` needs a function defined with `def`, not `{type_name(func)}`"
            )
        args, kwargs = await self._arguments(node.call, ctx)
        return await self._run_on_fresh_state(func, args, kwargs, ctx, node.span)

    async def _run_on_fresh_state(
        self, func: Function, args: list[Any], kwargs: dict[str, Any], ctx: Context, span: Span
    ) -> Record:
        state = State()
        self.states.append(state)
        fresh = replace(ctx, state=state, in_role=False, streams=False)
        value = await self._call_function(func, args, kwargs, fresh, span)
        attributes = dict(state.variables)
        attributes.update(text=state.text(), messages=state.messages(), return_value=value)
        return Record("state", attributes)

    async def _run_batch(
        self, args: list[Any], kwargs: dict[str, Any], ctx: Context, span: Span
    ) -> list[Record]:
        func, rows, parallel = _batch_arguments(args, kwargs)
        limit = asyncio.Semaphore(parallel)
        prefix = function_prefix(func.node, self.program)
        if len(rows) > 1 and not prefix.is_empty:
            with backend_errors():
                await self.backend.cache_prefix(prefix.prompt)

        async def one(row: dict[str, Any]) -> Record:
            async with limit:
                return await self._run_on_fresh_state(func, [], row, ctx, span)

        tasks = [asyncio.create_task(one(row)) for row in rows]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ expressions

    async def _str(self, node: nodes.Str, ctx: Context) -> str:
        pieces = []
        num_chars = 0
        for part in node.parts:
            if isinstance(part, str):
                pieces.append(part)
            else:
                value = await self.eval(part.expr, ctx)
                try:
                    pieces.append(format_value(value, part.spec))
                    check_text_len(num_chars + len(pieces[-1]), "this string")
                except SglError as error:
                    raise error.at(part.span) from None
            num_chars += len(pieces[-1])
        return "".join(pieces)

    async def _name(self, node: nodes.Name, ctx: Context) -> Any:
        scope = ctx.scope.find(node.id)
        if scope is not None:
            return scope.vars[node.id]
        if node.id in self.builtins:
            return self.builtins[node.id]
        raise SglNameError(f"`{node.id}` is not defined")

    async def _list(self, node: nodes.ListExpr, ctx: Context) -> list[Any]:
        return [await self.eval(item, ctx) for item in node.items]

    async def _dict(self, node: nodes.DictExpr, ctx: Context) -> dict[Any, Any]:
        result = {}
        for key_node, value_node in node.items:
            key = await self.eval(key_node, ctx)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SglTypeError(f"a dict key cannot be `{type_name(key)}`", key_node.span)
            result[key] = await self.eval(value_node, ctx)
        return result

    async def _unary(self, node: nodes.UnaryOp, ctx: Context) -> Any:
        value = await self.eval(node.operand, ctx)
        if node.op == "not":
            return not value
        if not isinstance(value, (int, float)):
            raise SglTypeError(f"bad operand type for unary {node.op}: `{type_name(value)}`")
        return -value if node.op == "-" else +value

    async def _binop(self, node: nodes.BinOp, ctx: Context) -> Any:
        return binary(node.op, await self.eval(node.left, ctx), await self.eval(node.right, ctx))

    async def _boolop(self, node: nodes.BoolOp, ctx: Context) -> Any:
        left = await self.eval(node.left, ctx)
        if (node.op == "and") != bool(left):
            return left
        return await self.eval(node.right, ctx)

    async def _compare(self, node: nodes.Compare, ctx: Context) -> bool:
        left = await self.eval(node.left, ctx)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = await self.eval(right_node, ctx)
            if not compare(op, left, right):
                return False
            left = right
        return True

    async def _ifexpr(self, node: nodes.IfExpr, ctx: Context) -> Any:
        branch = node.body if await self.eval(node.test, ctx) else node.orelse
        return await self.eval(branch, ctx)

    async def _index(self, node: nodes.Index, ctx: Context) -> Any:
        value = await self.eval(node.value, ctx)
        if not isinstance(value, (list, str, dict)):
            raise SglTypeError(f"`{type_name(value)}` cannot be indexed")
        index = await self._index_key(node.index, ctx)
        try:
            return value[index]
        except KeyError:
            raise SglValueError(f"dict has no key {to_repr(index)}").at(node.index.span) from None
        except (IndexError, TypeError) as exc:
            raise check_error(exc).at(node.index.span) from None

    async def _index_key(self, index: nodes.Expr | nodes.Slice, ctx: Context) -> Any:
        if not isinstance(index, nodes.Slice):
            return await self.eval(index, ctx)
        parts = [
            await self.eval(p, ctx) if p else None for p in (index.lower, index.upper, index.step)
        ]
        for part in parts:
            if part is not None and (not isinstance(part, int) or isinstance(part, bool)):
                raise SglTypeError(
                    f"slice indices must be ints, not `{type_name(part)}`", index.span
                )
        return slice(*parts)

    async def _attribute(self, node: nodes.Attribute, ctx: Context) -> Any:
        return get_attribute(await self.eval(node.value, ctx), node.attr)

    async def _call(self, node: nodes.Call, ctx: Context) -> Any:
        func = await self.eval(node.func, ctx)
        if func is META:
            return self._meta(node, ctx)
        args, kwargs = await self._arguments(node, ctx)
        if func is RUN_BATCH:
            return await self._run_batch(args, kwargs, ctx, node.span)
        return await self.call(func, args, kwargs, ctx, node.span)

    async def _arguments(self, node: nodes.Call, ctx: Context) -> tuple[list[Any], dict[str, Any]]:
        args = [await self.eval(arg, ctx) for arg in node.args]
        kwargs: dict[str, Any] = {}
        for kw in node.kwargs:
            value = await self.eval(kw.value, ctx)
            if kw.name is not None:
                kwargs[kw.name] = value
            elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
                kwargs.update(value)
            else:
                raise SglTypeError(
                    f"`**` needs a dict with string keys, not `{type_name(value)}`", kw.span
                )
        return args, kwargs

    async def call(
        self, func: Any, args: list[Any], kwargs: dict[str, Any], ctx: Context, span: Span
    ) -> Any:
        """Call a function value: a `def` runs on the caller's state; built-ins are Python callables."""
        if isinstance(func, Function):
            return await self._call_function(func, args, kwargs, ctx, span)
        if func is make_tool:  # takes a `def` as it is, not as a Python callable
            return make_tool(*args, **kwargs)
        if isinstance(func, (_ContextBuiltin, Schema, Record)) or not callable(func):
            raise SglTypeError(f"`{type_name(func)}` is not callable")
        args = [self._callable_for_python(arg, ctx, span) for arg in args]
        kwargs = {k: self._callable_for_python(v, ctx, span) for k, v in kwargs.items()}
        try:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except SglError:
            raise
        except Exception as exc:
            raise check_error(exc) from None
        return list(result) if isinstance(result, tuple) else result

    def _callable_for_python(self, value: Any, ctx: Context, span: Span) -> Any:
        if not isinstance(value, Function):
            return value

        def invoke(*args: Any, **kwargs: Any) -> Any:
            return self._call_function(value, list(args), kwargs, ctx, span)

        return invoke

    async def _call_function(
        self, func: Function, args: list[Any], kwargs: dict[str, Any], ctx: Context, span: Span
    ) -> Any:
        if len(ctx.stack) >= self.max_recursion:
            raise SglValueError(
                f"maximum recursion depth ({self.max_recursion}) exceeded in `{func.name}`"
            )
        scope = Scope("function", func.scope)
        scope.vars.update(func.bind(args, kwargs))
        inner = replace(ctx, scope=scope, stack=(*ctx.stack, Frame(func.name, span)))
        try:
            await self.exec_block(func.node.body, inner)
        except ReturnValue as ret:
            return ret.value
        return None

    def _meta(self, node: nodes.Call, ctx: Context) -> dict[str, Any]:
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], nodes.Name):
            raise SglTypeError(
                "meta() takes the name of a `gen` or `select` variable: meta(answer)"
            )
        name = node.args[0].id
        if name not in ctx.state.meta:
            raise SglNameError(f"no `gen` or `select` named `{name}` has run on this state")
        return dict(ctx.state.meta[name])

    async def _listcomp(self, node: nodes.ListComp, ctx: Context) -> list[Any]:
        scope = Scope("comp", ctx.scope)
        inner = replace(ctx, scope=scope)
        result = []
        for item in iterate(await self.eval(node.iter, ctx)):
            self._bind_targets(node.targets, item, scope)
            for (
                cond
            ) in node.conditions:  # in order, stopping at the first false one, as Python does
                if not await self.eval(cond, inner):
                    break
            else:
                result.append(await self.eval(node.elt, inner))
        return result


# ---------------------------------------------------------------- helpers

_MISSING = object()


class _ImportState(State):
    """The state of a program being imported: it exists only to name the importing file."""

    def __init__(self, program: nodes.Program) -> None:
        super().__init__()
        self.program = program


def _runs_on_import(stmt: nodes.Stmt) -> bool:
    return isinstance(
        stmt, (nodes.FuncDef, nodes.SchemaDecl, nodes.Import, nodes.Assign, nodes.ParamDecl)
    )


def _as_expr(index: nodes.Expr | nodes.Slice) -> nodes.Expr:
    if isinstance(index, nodes.Slice):
        raise SglTypeError("cannot assign to a slice", index.span)
    return index


def _batch_arguments(
    args: list[Any], kwargs: dict[str, Any]
) -> tuple[Function, list[dict[str, Any]], int]:
    if len(args) < 2 or set(kwargs) - {"parallel"}:
        raise SglTypeError("run_batch(f, rows, parallel=N) takes a function and a list of dicts")
    func, rows = args[0], args[1]
    parallel = kwargs.get("parallel", args[2] if len(args) > 2 else 8)
    if not isinstance(func, Function):
        raise SglTypeError(
            f"run_batch needs a function defined with `def`, not `{type_name(func)}`"
        )
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SglTypeError("run_batch needs a list of dicts (one per run) as its second argument")
    if not isinstance(parallel, int) or parallel < 1:
        raise SglValueError("run_batch's `parallel` must be a positive int")
    return func, rows, parallel


def _check_new_key(container: list[Any] | dict[Any, Any], key: Any) -> None:
    """A dict that would grow past `max_items` is a limit error (lists do not grow here)."""
    if isinstance(container, dict) and key not in container:
        check_num_items(len(container) + 1, "a new dict key")


def _timeout_error(limits: Limits) -> SglError:
    return limit_error(
        f"the program ran longer than its time limit of {limits.timeout_s:g} s (timeout_s)",
        "timeout_s",
    )


def _branch_error(exc: BaseException | None, node: nodes.Fork, item: Any) -> BaseException:
    if not isinstance(exc, SglError):
        return exc or RuntimeError("fork branch failed")
    label = f"`{node.var} = {to_repr(item)}`" if node.var else f"number {item}"
    note = f"raised in the fork branch for {label} (fork at {node.span.location})"
    exc.hint = f"{exc.hint}; {note}" if exc.hint else note
    return exc
