"""What the language server knows about one document: problems, bindings, symbols, hover text.

Pure Python over the AST (no pygls): positions are character offsets into the text;
`server.py` converts them to and from LSP's line/UTF-16 positions.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sgl_lang import nodes
from sgl_lang.errors import SglError
from sgl_lang.grammar import parse
from sgl_lang.loader import Loader
from sgl_lang.lsp import vocabulary
from sgl_lang.source import Source, Span

_RECOVERY_TRIES = 8
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Binding:
    """Where a name is bound. `kind`: function, schema, param, import, variable, generated,
    argument (of a `def`) or loop. `scope` is the function, fork or comprehension whose
    variable it is; None for module level."""

    name: str
    kind: str
    span: Span
    node: Any
    scope: Any = None


@dataclass(frozen=True)
class Symbol:
    """An outline entry: a def, schema, param, import or top-level variable."""

    name: str
    kind: str
    span: Span
    name_span: Span
    children: tuple[Symbol, ...] = ()


@dataclass
class Document:
    """One `.sgl` text, analysed. `path` names it in messages and resolves imports."""

    path: Path
    text: str
    program: nodes.Program | None = None
    problems: list[SglError] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)

    @classmethod
    def analyse(cls, path: Path, text: str, previous: Document | None = None) -> Document:
        """Parse and check `text`. When it does not parse, names are kept from `previous`
        so completion still offers them."""
        document = cls(path, text)
        loader = Loader()
        try:
            program = parse(Source(str(path), text))
        except SglError as error:
            document.problems = [error]
            document.bindings = _recovered_bindings(path, text, error, previous)
            return document
        loader.programs[path.resolve()] = program
        document.program = program
        document.problems = _own_problems(program, loader.check(program), loader)
        document.bindings = list(_bindings(program.body, None))
        return document

    # ------------------------------------------------------------ lookups

    def word_at(self, offset: int) -> tuple[str, int, str | None] | None:
        """The identifier at `offset`: (word, its start, the name before a `.` or None)."""
        for found in _WORD.finditer(self.text[max(0, offset - 200) : offset + 200]):
            start = found.start() + max(0, offset - 200)
            if start <= offset <= start + len(found.group(0)):
                before = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*$", self.text[:start])
                return found.group(0), start, before.group(1) if before else None
        return None

    def lookup(self, name: str, offset: int) -> Binding | None:
        """The binding `name` refers to at `offset`: innermost scope first, earliest binding."""
        enclosing = sorted(
            (b.scope for b in self.bindings if b.scope is not None and _contains(b.scope, offset)),
            key=lambda node: node.span.end - node.span.start,
        )
        for scope in [*dict.fromkeys(enclosing), None]:
            for binding in self.bindings:
                if binding.name == name and binding.scope is scope:
                    return binding
        return None

    def names_at(self, offset: int) -> list[str]:
        """Names visible at `offset`."""
        return [b.name for b in self.bindings if b.scope is None or _contains(b.scope, offset)]

    def imported(self, binding: Binding) -> Document | None:
        """The document an `import "path" as x` binding names, analysed, or None."""
        node = binding.node
        if not isinstance(node, nodes.Import) or node.path is None:
            return None
        target = self.path.parent / node.path
        try:
            return Document.analyse(target, target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None

    def attributes(self, name: str, offset: int) -> list[str]:
        """Attribute names of the value `name` refers to (a module, an imported file, a schema)."""
        binding = self.lookup(name, offset)
        if binding is None or binding.kind not in ("import", "schema"):
            return []
        if binding.kind == "schema":
            return ["json_schema", "name"]
        node = binding.node
        if node.module is not None:
            return sorted(vocabulary.module_exports(node.module))
        other = self.imported(binding)
        return [b.name for b in other.bindings if b.scope is None] if other else []

    # ------------------------------------------------------------ features

    def completions(self, offset: int) -> list[vocabulary.Completion]:
        line = self.text[:offset].rsplit("\n", 1)[-1]
        return vocabulary.complete(
            line, self.names_at(offset), lambda name: self.attributes(name, offset)
        )

    def definition(self, offset: int) -> tuple[Path, Span | None] | None:
        """Where the name at `offset` is defined: a file and a span (None: the whole file)."""
        imported = self._import_at(offset)
        if imported is not None:
            return imported
        word = self.word_at(offset)
        if word is None:
            return None
        name, _, base = word
        if base is not None:
            return self._attribute_definition(base, name, offset)
        binding = self.lookup(name, offset)
        return (self.path, binding.span) if binding else None

    def _attribute_definition(
        self, base: str, name: str, offset: int
    ) -> tuple[Path, Span | None] | None:
        binding = self.lookup(base, offset)
        if binding is None:
            return None
        other = self.imported(binding)
        if other is None:
            return None
        target = other.lookup(name, len(other.text))
        return (other.path, target.span) if target else None

    def _import_at(self, offset: int) -> tuple[Path, Span | None] | None:
        """On the path or module name of an `import`: the imported file."""
        for binding in self.bindings:
            node = binding.node
            if not isinstance(node, nodes.Import) or not _contains(node, offset):
                continue
            if binding.span.start <= offset <= binding.span.end and node.alias != node.module:
                return None  # on the alias: that is the definition itself
            if node.path is not None:
                return (self.path.parent / node.path).resolve(), None
            spec = importlib.util.find_spec(f"sgl_lang.stdlib.{node.module}")
            if spec is not None and spec.origin:
                return Path(spec.origin), None
        return None

    def hover(self, offset: int) -> str | None:
        """Markdown for the word at `offset`: docs of built-ins, `gen` arguments, keywords,
        stdlib modules, and of the program's own defs, schemas and params."""
        argument = self._argument_at(offset)
        if argument is not None:
            return argument
        word = self.word_at(offset)
        if word is None:
            return None
        name, _, base = word
        if base is not None:
            return self._attribute_hover(base, name, offset)
        binding = self.lookup(name, offset)
        if binding is not None:
            return describe(binding)
        if name in vocabulary.KEYWORDS:
            doc = vocabulary.KEYWORD_DOCS.get(name)
            return f"`{name}` — {doc}" if doc else None
        doc = vocabulary.builtin_doc(name)
        return _doc(doc) if doc else None

    def _argument_at(self, offset: int) -> str | None:
        for node in _walk(self.program.body if self.program else ()):
            if not isinstance(node, (nodes.Gen, nodes.Select)):
                continue
            for keyword in node.args:
                name = keyword.name
                if name and keyword.span.start <= offset <= keyword.span.start + len(name):
                    docs = (
                        vocabulary.GEN_ARGUMENT_DOCS
                        if isinstance(node, nodes.Gen)
                        else vocabulary.SELECT_ARGUMENT_DOCS
                    )
                    what = "gen" if isinstance(node, nodes.Gen) else "select"
                    doc = docs.get(name)
                    return (
                        f"`{what}` argument — {doc}"
                        if doc
                        else f"`{what}` has no argument `{name}`"
                    )
        return None

    def _attribute_hover(self, base: str, name: str, offset: int) -> str | None:
        binding = self.lookup(base, offset)
        if binding is None or not isinstance(binding.node, nodes.Import):
            return None
        if binding.node.module is not None:
            doc = vocabulary.module_doc(binding.node.module, name)
            return _doc(doc) if doc else None
        other = self.imported(binding)
        target = other.lookup(name, len(other.text)) if other else None
        return describe(target) if target else None

    def symbols(self) -> list[Symbol]:
        """The outline: defs (with their parameters), schemas (with their fields), params,
        imports and top-level variables, in source order."""
        symbols: list[Symbol] = []
        seen: set[str] = set()
        for binding in self.bindings:
            if binding.scope is not None or binding.name in seen:
                continue
            seen.add(binding.name)
            node = binding.node
            children: tuple[Symbol, ...] = ()
            if isinstance(node, nodes.FuncDef):
                children = tuple(
                    Symbol(p.name, "argument", p.span, _name_span(p.span, p.name))
                    for p in node.params
                )
            elif isinstance(node, nodes.SchemaDecl):
                children = tuple(
                    Symbol(f.name, "field", f.span, _name_span(f.span, f.name)) for f in node.fields
                )
            symbols.append(Symbol(binding.name, binding.kind, node.span, binding.span, children))
        return symbols


def describe(binding: Binding) -> str:
    """Hover text for a name the program binds."""
    node = binding.node
    if isinstance(node, nodes.FuncDef):
        params = ", ".join(_source(p.span) for p in node.params)
        text = _code(f"def {node.name}({params})")
        return f"{text}\n\n{node.doc}" if node.doc else text
    if isinstance(node, nodes.SchemaDecl):
        return _code(_source(node.span))
    if isinstance(node, nodes.Import) and node.module is not None:
        doc = vocabulary.module_doc(node.module)
        return _code(_first_line(node.span)) + (f"\n\n{doc}" if doc else "")
    if isinstance(node, nodes.Param):
        return f"(parameter) `{_source(node.span)}`"
    if isinstance(node, (nodes.Gen, nodes.Select)):
        return _code(_source(node.span)) + "\n\nbound by the generation (also in the state)"
    return _code(_first_line(node.span))


def _doc(doc: str) -> str:
    """A Python docstring as hover text: its first line (the signature) as code."""
    first, _, rest = doc.partition("\n")
    return _code(first) + (f"\n\n{rest.strip()}" if rest.strip() else "")


def _code(text: str) -> str:
    return f"```sgl\n{text}\n```"


def _source(span: Span) -> str:
    return span.text.rstrip()


def _first_line(span: Span) -> str:
    return span.source.line(span.line).strip()


def _contains(node: Any, offset: int) -> bool:
    return bool(node.span.start <= offset <= node.span.end)


def _name_span(span: Span, name: str, after: int = 0) -> Span:
    """The span of the word `name` inside `span` (after `after` characters)."""
    found = re.compile(rf"\b{re.escape(name)}\b").search(span.source.text, span.start + after)
    start = found.start() if found and found.start() < span.end else span.start
    return span.source.span(start, start + len(name))


def _own_problems(
    program: nodes.Program, problems: list[SglError], loader: Loader
) -> list[SglError]:
    """Problems located in this file; a problem in an imported file is shown on its import."""
    own: list[SglError] = []
    name = program.source.name
    for problem in problems:
        if problem.span is None or problem.span.source.name == name:
            own.append(problem)
            continue
        at = _import_of(program, Path(problem.span.source.name), loader)
        own.append(type(problem)(f"in `{problem.span.location}`: {problem.message}", at))
    return own


def _import_of(program: nodes.Program, path: Path, loader: Loader) -> Span | None:
    for stmt in program.body:
        if (
            isinstance(stmt, nodes.Import)
            and stmt.path is not None
            and loader.import_path(program, stmt).resolve() == path.resolve()
        ):
            return stmt.span
    imports = [s for s in program.body if isinstance(s, nodes.Import) and s.path is not None]
    return imports[0].span if imports else None


# ---------------------------------------------------------------- bindings


def _recovered_bindings(
    path: Path, text: str, error: SglError, previous: Document | None
) -> list[Binding]:
    """Module-level names of a text that does not parse: those of the longest run of lines
    before the syntax error that parses (a few tries), else those of the previous version."""
    if error.span is not None:
        starts = error.span.source.line_starts
        for line in range(error.span.line - 1, max(0, error.span.line - 1 - _RECOVERY_TRIES), -1):
            try:
                program = parse(Source(str(path), text[: starts[line]]))
            except SglError:
                continue
            return [b for b in _bindings(program.body, None) if b.scope is None]
    return [b for b in previous.bindings if b.scope is None] if previous else []


def _bindings(body: tuple[nodes.Stmt, ...], scope: Any) -> Iterator[Binding]:
    for stmt in body:
        yield from _stmt_bindings(stmt, scope)


def _stmt_bindings(stmt: nodes.Stmt, scope: Any) -> Iterator[Binding]:
    match stmt:
        case nodes.FuncDef():
            yield Binding(stmt.name, "function", stmt.name_span, stmt, scope)
            for param in stmt.params:
                yield Binding(
                    param.name, "argument", _name_span(param.span, param.name), param, stmt
                )
            yield from _bindings(stmt.body, stmt)
            yield from _expr_bindings(stmt, scope)
            return
        case nodes.SchemaDecl():
            yield Binding(stmt.name, "schema", stmt.name_span, stmt, scope)
            return
        case nodes.ParamDecl():
            yield Binding(stmt.name, "param", _name_span(stmt.span, stmt.name, 5), stmt, scope)
        case nodes.Import():
            at = len(stmt.span.text) - len(stmt.alias)
            yield Binding(
                stmt.alias,
                "import",
                stmt.span.source.span(stmt.span.start + at, stmt.span.end),
                stmt,
                scope,
            )
        case nodes.Gen() | nodes.Select():
            yield Binding(stmt.name, "generated", stmt.name_span, stmt, scope)
        case nodes.Assign():
            for target in stmt.targets:
                if isinstance(target, nodes.Name):
                    yield Binding(target.id, "variable", target.span, stmt, scope)
            if isinstance(stmt.value, nodes.Fork):
                yield from _stmt_bindings(stmt.value, scope)
                return
        case nodes.For():
            for name in stmt.targets:
                yield Binding(name, "loop", _name_span(stmt.span, name, 3), stmt, scope)
        case nodes.Fork():
            if stmt.var:
                yield Binding(stmt.var, "loop", _name_span(stmt.span, stmt.var, 4), stmt, stmt)
            yield from _bindings(stmt.body, stmt)
            yield from _expr_bindings(stmt, scope)
            return
    for child in _children(stmt):
        if isinstance(child, tuple):
            yield from _bindings(child, scope)
    yield from _expr_bindings(stmt, scope)


def _expr_bindings(node: Any, scope: Any) -> Iterator[Binding]:
    """Comprehension variables inside the expressions of `node` (not in its nested blocks)."""
    for child in _children(node):
        if not isinstance(child, nodes.Node) or isinstance(child, nodes.Stmt):
            continue
        if isinstance(child, nodes.ListComp):
            for name in child.targets:
                yield Binding(name, "loop", _name_span(child.span, name), child, child)
        yield from _expr_bindings(child, scope)


def _children(node: Any) -> Iterator[Any]:
    """The child nodes of a node, and its blocks (non-empty tuples of statements) as tuples."""
    for f in fields(node):
        if f.name in ("span", "name_span"):
            continue
        value = getattr(node, f.name)
        if isinstance(value, tuple) and value and all(isinstance(i, nodes.Stmt) for i in value):
            yield value
        else:
            yield from _nodes_in(value)


def _nodes_in(value: Any) -> Iterator[nodes.Node]:
    if isinstance(value, nodes.Interp):
        yield value.expr
    elif isinstance(value, nodes.Node):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _nodes_in(item)


def _walk(body: Any) -> Iterator[Any]:
    """Every node under a block or a node, depth first."""
    items = body if isinstance(body, tuple) else (body,)
    for item in items:
        if isinstance(item, nodes.Node):
            yield item
            for child in _children(item):
                yield from _walk(child)
