"""Which `gen`/`select` constraints a backend enforces, and which optional `gen` features
(`logprobs`, `reasoning`, ...) it honours: `sgl check --backend`'s report, and the errors that
stop `sgl run` before anything runs (constraints: unless `--allow-unenforced`); and the
statements a backend cannot run at all (`image` without image input, `gen … tools=` without
tool calls), refused whatever the flags."""

from __future__ import annotations

from dataclasses import dataclass

from sgl_lang import nodes
from sgl_lang.errors import SglBackendError, SglConstraintError
from sgl_lang.gen_args import CONSTRAINT_ARGUMENTS, OPTION_ARGUMENTS
from sgl_lang.protocol import SELECT_METHODS, Capabilities
from sgl_lang.source import Span

# `gen` argument -> the capability that enforces it (`type=` is decoded as a regex)
ARGUMENT_CAPABILITY = {
    "regex": "regex",
    "type": "regex",
    "json": "json",
    "choices": "choices",
    "grammar": "grammar",
}
UNENFORCED_HINT = (
    "`sgl run --allow-unenforced` generates without the constraint, checks the output "
    "and retries it (--retries N)"
)


@dataclass(frozen=True)
class ConstraintSite:
    """A `gen` with a constraint, or a `select`, and whether a backend enforces it.

    `constraint` is the `gen`'s constraint argument; for a `select` it is "scored" (the backend
    scores the choices) or "choices" (it cannot, and `select` becomes `gen … choices=`). For an
    `is_option` site it is an optional feature (`OPTION_ARGUMENTS`), `enforced` when the backend
    honours it."""

    statement: str
    name: str
    constraint: str
    enforced: bool
    span: Span
    is_option: bool = False

    def report_line(self, backend_name: str) -> str:
        """`FILE:LINE:COL: gen `NAME` regex: enforced by BACKEND` (or `NOT enforced by`)."""
        verdict = "enforced by" if self.enforced else "NOT enforced by"
        if self.is_option:
            verdict = "honoured by" if self.enforced else "NOT honoured by"
        head = f"{self.span.location}: {self.statement} `{self.name}` {self.constraint}"
        return f"{head}: {verdict} {backend_name}"

    def error(self, backend_name: str) -> SglConstraintError:
        """The error for a site the backend cannot enforce."""
        if self.is_option:
            message = f"backend `{backend_name}` cannot honour `{self.constraint}`"
            return SglConstraintError(message, self.span)
        if self.statement == "select":
            what = "score the choices of this `select` nor enforce them while decoding"
            message = f"backend `{backend_name}` can neither {what}"
        else:
            message = f"backend `{backend_name}` cannot enforce `{self.constraint}` while decoding"
        return SglConstraintError(message, self.span, hint=UNENFORCED_HINT)


def constraint_sites(
    program: nodes.Program, capabilities: Capabilities, *, imported: bool = False
) -> list[ConstraintSite]:
    """Every constraint site of `program`, in source order. Of an `imported` program only the
    sites in its functions count: its other top-level statements never run."""
    body = program.body
    if imported:
        body = tuple(stmt for stmt in body if isinstance(stmt, nodes.FuncDef))
    calls = (node for node in nodes.walk(*body) if isinstance(node, (nodes.Gen, nodes.Select)))
    return [site for node in calls for site in _sites(node, capabilities)]


def capability_errors(
    program: nodes.Program,
    capabilities: Capabilities,
    backend_name: str,
    *,
    imported: bool = False,
) -> list[SglBackendError]:
    """An error at each `image` statement when the backend cannot see images, and at each
    `gen … tools=` when it cannot offer tools (of an `imported` program: in its functions)."""
    body = program.body
    if imported:
        body = tuple(stmt for stmt in body if isinstance(stmt, nodes.FuncDef))
    errors = []
    for node in nodes.walk(*body):
        if isinstance(node, nodes.ImageStmt) and not capabilities.images:
            message = f"backend `{backend_name}` cannot see images"
            errors.append(SglBackendError(message, node.span))
        elif isinstance(node, nodes.Gen) and not capabilities.tools and _has_tools(node):
            message = f"backend `{backend_name}` cannot offer tools to the model"
            errors.append(SglBackendError(message, node.span))
    return errors


def _has_tools(node: nodes.Gen) -> bool:
    return any(kw.name == "tools" for kw in node.args)


def _sites(node: nodes.Gen | nodes.Select, capabilities: Capabilities) -> list[ConstraintSite]:
    if isinstance(node, nodes.Select):
        return [_select_site(node, capabilities)]
    spans = {kw.name: kw.span for kw in node.args if kw.name}
    sites = [
        ConstraintSite("gen", node.name, name, name in capabilities.gen_options, span, True)
        for name, span in spans.items()
        if name in OPTION_ARGUMENTS and not _is_off(node, name)
    ]
    argument = next((name for name in CONSTRAINT_ARGUMENTS if name in spans), None)
    if argument is not None:
        enforced = ARGUMENT_CAPABILITY[argument] in capabilities.constraints
        sites.insert(0, ConstraintSite("gen", node.name, argument, enforced, node.span))
    return sites


def _is_off(node: nodes.Gen, name: str) -> bool:
    """Whether the argument `name` is a literal that asks for nothing (`reasoning=false`,
    `logprobs=none`, `min_tokens=0`): a backend need not honour it."""
    value = next(kw.value for kw in node.args if kw.name == name)
    if not isinstance(value, nodes.Const):
        return False
    return (
        value.value is None or value.value is False or (name == "min_tokens" and value.value == 0)
    )


def _select_site(node: nodes.Select, capabilities: Capabilities) -> ConstraintSite:
    """A `select` is scored when the backend scores its method (every method, when the
    method is not a literal); else it is generated, enforced when `choices` is."""
    method = _literal_method(node)
    methods = set(SELECT_METHODS) if method is None else {method}
    if methods <= capabilities.select_methods:
        return ConstraintSite("select", node.name, "scored", True, node.span)
    enforced = "choices" in capabilities.constraints
    return ConstraintSite("select", node.name, "choices", enforced, node.span)


def _literal_method(node: nodes.Select) -> str | None:
    """The `method=` of a `select` ("normalized" by default); None when it is computed."""
    value = next((kw.value for kw in node.args if kw.name == "method"), None)
    if value is None:
        return "normalized"
    if isinstance(value, nodes.Str) and value.is_constant:
        return "".join(str(part) for part in value.parts)
    return None
