"""Reading program files: parsing, `import "path"` resolution, import cycles, and checks across files."""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import Any

from sgl_lang import nodes, resolve
from sgl_lang.errors import SglError, SglImportError, SglPermissionError, SglSyntaxError
from sgl_lang.grammar import parse
from sgl_lang.source import Source
from sgl_lang.stdlib.permissions import Permissions


def read_source(path: Path, max_bytes: int | None = None) -> Source:
    """A file as a Source, without a leading UTF-8 byte order mark. Unreadable files are
    import errors, bytes that are not UTF-8 a syntax error at the first one. With `max_bytes`,
    only a regular file of at most that size is read (nothing is read from anything else)."""
    try:
        return decode_source(str(path), _read_bytes(path, max_bytes))
    except OSError as exc:
        raise SglImportError(f"cannot read `{path}`: {exc.strerror or exc}") from None


def _read_bytes(path: Path, max_bytes: int | None) -> bytes:
    if max_bytes is None:
        return path.read_bytes()
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SglImportError(f"cannot read `{path}`: not a regular file")
        if info.st_size > max_bytes:
            raise SglImportError(f"cannot read `{path}`: larger than {max_bytes} bytes")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew since fstat
        raise SglImportError(f"cannot read `{path}`: larger than {max_bytes} bytes")
    return data


def decode_source(name: str, data: bytes) -> Source:
    """The UTF-8 text of a file's bytes, without a leading byte order mark; a byte that is not
    UTF-8 is a syntax error located at the first one."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return Source(name, _universal_newlines(data.decode("utf-8")))
    except UnicodeDecodeError as error:
        # the text before the bad byte is exact, so its length is the bad byte's offset
        source = Source(name, _universal_newlines(data.decode("utf-8", errors="replace")))
        offset = len(_universal_newlines(data[: error.start].decode("utf-8")))
        message = f"invalid UTF-8: byte 0x{data[error.start]:02x} (a program file must be UTF-8)"
        raise SglSyntaxError(message, source.span(offset, offset + 1)) from None


def _universal_newlines(text: str) -> str:
    """`\\r\\n` and a lone `\\r` as `\\n`, as Python's text files read them."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


class Loader:
    """Parses each file once and resolves imports relative to the importing file.

    With `permissions` (a run's), an import may read only below the folder of the first
    program loaded (the one run) unless `--allow-read` grants the file; without (`sgl
    check`, the REPL, the language server: the user reading their own files), any file.
    With `max_bytes` (the language server), only regular files of at most that size are read."""

    def __init__(
        self, permissions: Permissions | None = None, max_bytes: int | None = None
    ) -> None:
        self.programs: dict[Path, nodes.Program] = {}
        self.permissions = permissions
        self.max_bytes = max_bytes
        self.root: Path | None = None  # the folder of the first program loaded

    def load(self, path: Path) -> nodes.Program:
        key = path.resolve()
        if self.root is None:
            self.root = key.parent
        if key not in self.programs:
            self.programs[key] = parse(read_source(path, self.max_bytes))
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
