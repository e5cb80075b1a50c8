"""What the language server knows about one document: problems, bindings, symbols, hover text.

Pure Python over the AST and its binding table (no pygls): positions are character offsets
into the text; `server.py` converts them to and from LSP's line/UTF-16 positions.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from sgl_lang import nodes
from sgl_lang.bindings import Binding, BindingTable, Scope, binding_table, name_span
from sgl_lang.errors import SglError
from sgl_lang.grammar import parse
from sgl_lang.loader import Loader, read_source
from sgl_lang.lsp import vocabulary
from sgl_lang.source import Source, Span

_RECOVERY_TRIES = 8
MAX_IMPORT_BYTES = 1 << 20
"""The largest file an `import` makes the server read (1 MiB); it reads regular files only."""
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    """One `.sgl` text, analysed. `path` names it in messages and resolves imports; `table` is
    the program's binding table (its module-level names alone when the text does not parse)."""

    path: Path
    text: str
    program: nodes.Program | None = None
    problems: list[SglError] = field(default_factory=list)
    table: BindingTable = field(default_factory=lambda: _module_only(None))

    @classmethod
    def analyse(cls, path: Path, text: str, previous: Document | None = None) -> Document:
        """Parse and check `text`. When it does not parse, names are kept from `previous`
        so completion still offers them."""
        document = cls(path, text)
        loader = Loader(max_bytes=MAX_IMPORT_BYTES)
        try:
            program = parse(Source(str(path), text))
        except SglError as error:
            document.problems = [error]
            document.table = _recovered_table(path, text, error, previous)
            return document
        loader.programs[path.resolve()] = program
        document.program = program
        document.problems = _own_problems(program, loader.check(program), loader)
        document.table = binding_table(program)
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
        """The binding `name` refers to at `offset`: that of the name used there, else the
        one the innermost scope there sees."""
        use = self.table.use_at(offset)
        if use is not None and use.name == name:
            return use.binding
        return self.table.scope_at(offset).lookup(name)

    def names_at(self, offset: int) -> list[str]:
        """Names visible at `offset`."""
        return sorted(self.table.scope_at(offset).visible())

    def exported(self, name: str) -> Binding | None:
        """The module-level binding of `name` (what `import "path" as m` makes `m.name`)."""
        return self.table.module.names.get(name)

    def imported(self, binding: Binding) -> Document | None:
        """The document an `import "path" as x` binding names, analysed, or None."""
        node = binding.node
        if not isinstance(node, nodes.Import) or node.path is None:
            return None
        target = self.path.parent / node.path
        try:
            source = read_source(target, MAX_IMPORT_BYTES)
        except SglError:
            return None
        return Document.analyse(target, source.text)

    def attributes(self, name: str, offset: int) -> list[str]:
        """Attribute names of the value `name` refers to (a module, an imported file, a schema)."""
        binding = self.lookup(name, offset)
        if binding is None or not isinstance(binding.node, (nodes.Import, nodes.SchemaDecl)):
            return []
        if isinstance(binding.node, nodes.SchemaDecl):
            return ["json_schema", "name"]
        if binding.node.module is not None:
            return sorted(vocabulary.module_exports(binding.node.module))
        other = self.imported(binding)
        return list(other.table.module.names) if other else []

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
        target = other.exported(name) if other else None
        return (other.path, target.span) if other and target else None

    def _import_at(self, offset: int) -> tuple[Path, Span | None] | None:
        """On the path or module name of an `import`: the imported file."""
        for binding in (b for scope in self.table.scopes for b in scope.bindings):
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
        for node in nodes.walk(*(self.program.body if self.program else ())):
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
        target = other.exported(name) if other else None
        return describe(target) if target else None

    def symbols(self) -> list[Symbol]:
        """The outline: defs (with their parameters), schemas (with their fields), params,
        imports and top-level variables, in source order."""
        symbols: list[Symbol] = []
        for binding in self.table.module.names.values():
            node = binding.node
            children: tuple[Symbol, ...] = ()
            if isinstance(node, nodes.FuncDef):
                children = tuple(
                    Symbol(p.name, "argument", p.span, name_span(p.span, p.name))
                    for p in node.params
                )
            elif isinstance(node, nodes.SchemaDecl):
                children = tuple(
                    Symbol(f.name, "field", f.span, name_span(f.span, f.name)) for f in node.fields
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


def _contains(node: nodes.Node, offset: int) -> bool:
    return node.span.start <= offset <= node.span.end


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


def _recovered_table(
    path: Path, text: str, error: SglError, previous: Document | None
) -> BindingTable:
    """Module-level names of a text that does not parse: those of the longest run of lines
    before the syntax error that parses (a few tries), else those of the previous version."""
    if error.span is not None:
        starts = error.span.source.line_starts
        for line in range(error.span.line - 1, max(0, error.span.line - 1 - _RECOVERY_TRIES), -1):
            try:
                program = parse(Source(str(path), text[: starts[line]]))
            except SglError:
                continue
            return _module_only(binding_table(program))
    return _module_only(previous.table if previous else None)


def _module_only(table: BindingTable | None) -> BindingTable:
    """The module scope of `table` alone (an empty one without a table): the positions of
    inner scopes and uses are not kept for a text that changed since."""
    module = table.module if table else Scope("module", None, None)
    return BindingTable((module,), ())
