"""Reading program files: parsing, `import "path"` resolution, import cycles, and checks across files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgl_lang import nodes, resolve
from sgl_lang.errors import SglError, SglImportError, SglPermissionError
from sgl_lang.grammar import parse
from sgl_lang.source import Source
from sgl_lang.stdlib.permissions import Permissions


def read_source(path: Path) -> Source:
    """A file as a Source; unreadable or non-UTF-8 files are import errors."""
    try:
        return Source(str(path), path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SglImportError(f"cannot read `{path}`: {exc}") from None


class Loader:
    """Parses each file once and resolves imports relative to the importing file.

    With `permissions` (a run's), an import may read only below the folder of the first
    program loaded (the one run) unless `--allow-read` grants the file; without (`sgl
    check`, the REPL, the language server: the user reading their own files), any file."""

    def __init__(self, permissions: Permissions | None = None) -> None:
        self.programs: dict[Path, nodes.Program] = {}
        self.permissions = permissions
        self.root: Path | None = None  # the folder of the first program loaded

    def load(self, path: Path) -> nodes.Program:
        key = path.resolve()
        if self.root is None:
            self.root = key.parent
        if key not in self.programs:
            self.programs[key] = parse(read_source(path))
        return self.programs[key]

    def _require_read(self, node: nodes.Import, path: Path) -> None:
        """An import outside the program's folder needs `--allow-read` for that file."""
        if self.permissions is None or self.root is None:
            return
        target = path.resolve()
        if not target.is_relative_to(self.root) and not self.permissions.allows("read", target):
            raise SglPermissionError(
                f'`import "{node.path}"` reads `{target}`, outside the program\'s folder '
                f"`{self.root}`: that needs {self.permissions.needed('read')}",
                node.span,
            )

    def import_path(self, importer: nodes.Program, node: nodes.Import) -> Path:
        assert node.path is not None
        return Path(importer.source.name).parent / node.path

    def load_import(self, importer: nodes.Program, node: nodes.Import) -> nodes.Program:
        """The program `import "path"` names (for the interpreter)."""
        path = self.import_path(importer, node)
        self._require_read(node, path)
        if not path.is_file():
            raise SglImportError(f"cannot import `{node.path}`: no file at `{path}`", node.span)
        try:
            return self.load(path)
        except SglError as error:
            raise error.at(node.span) from None

    def check(self, program: nodes.Program, params: dict[str, Any] | None = None) -> list[SglError]:
        """Problems of `program` and of every program it imports, including import cycles."""
        problems = resolve.check(program, params)
        self._check_imports(program, [Path(program.source.name).resolve()], problems, set())
        return problems

    def imported(self, program: nodes.Program) -> list[nodes.Program]:
        """Every program `program` imports, directly or not, each once, in the order first
        met; one that cannot be loaded is left out (`check` reports it)."""
        found = {Path(program.source.name).resolve(): program}
        pending = [program]
        while pending:
            importer = pending.pop(0)
            for stmt in importer.body:
                if not isinstance(stmt, nodes.Import) or stmt.path is None:
                    continue
                path = self.import_path(importer, stmt).resolve()
                if path not in found and (imported := self._try_import(importer, stmt)):
                    found[path] = imported
                    pending.append(imported)
        return list(found.values())[1:]

    def _try_import(self, importer: nodes.Program, node: nodes.Import) -> nodes.Program | None:
        try:
            return self.load_import(importer, node)
        except SglError:
            return None

    def _check_imports(
        self, program: nodes.Program, chain: list[Path], problems: list[SglError], done: set[Path]
    ) -> None:
        for stmt in program.body:
            if not isinstance(stmt, nodes.Import) or stmt.path is None:
                continue
            path = self.import_path(program, stmt).resolve()
            if path in chain:
                cycle = " → ".join(p.name for p in [*chain[chain.index(path) :], path])
                problems.append(SglImportError(f"circular import: {cycle}", stmt.span))
                continue
            if path in done:
                continue
            done.add(path)
            try:
                imported = self.load_import(program, stmt)
            except SglError as error:
                problems.append(error)
                continue
            problems.extend(resolve.check(imported))
            self._check_imports(imported, [*chain, path], problems, done)
