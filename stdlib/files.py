"""The `files` module: read and write UTF-8 text files and list paths; needs `--allow-read`/`--allow-write`.

Paths are relative to the current working directory (where `sgl run` was started). With a
scoped grant (`--allow-read=DIR`) only the files below DIR can be read (written), and `glob`
lists only those.
"""

from __future__ import annotations

import glob as _glob
from pathlib import Path
from typing import Any

from sgl_lang.errors import SglTypeError, SglValueError
from sgl_lang.stdlib import permissions
from sgl_lang.stdlib.permissions import require
from sgl_lang.values import to_repr, type_name


def _path(path: Any, function: str) -> Path:
    if not isinstance(path, str):
        raise SglTypeError(f"files.{function}() path must be a str, not `{type_name(path)}`")
    return Path(path)


def _os_error(function: str, path: str, exc: OSError) -> SglValueError:
    reason = {
        FileNotFoundError: "no such file or directory",
        IsADirectoryError: "is a directory",
        NotADirectoryError: "a parent is not a directory",
        PermissionError: "the operating system denied access",
    }.get(type(exc), exc.strerror or str(exc))
    return SglValueError(f"files.{function}(): {to_repr(path)}: {reason}")


def read(path: str) -> str:
    """read(path) -> str: the whole content of the UTF-8 text file at `path`. Needs --allow-read."""
    require("read")
    file = _path(path, "read")
    require("read", file)
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SglValueError(f"files.read(): {to_repr(path)} is not UTF-8 text") from None
    except OSError as exc:
        raise _os_error("read", path, exc) from None


def write(path: str, text: str, append: bool = False) -> None:
    """write(path, text, append=false): write (or append) `text` to the file at `path`. Needs --allow-write.

    The file is created if needed; its folder must exist.
    """
    require("write")
    file = _path(path, "write")
    require("write", file)
    if not isinstance(text, str):
        raise SglTypeError(
            f"files.write() text must be a str, not `{type_name(text)}`; use str() or json_dumps()"
        )
    try:
        with file.open("a" if append else "w", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as exc:
        raise _os_error("write", path, exc) from None


def glob(pattern: str) -> list[str]:
    """glob(pattern) -> list[str]: the sorted paths matching `pattern` (`*`, `?`, `[ab]`, `**`). Needs --allow-read."""
    require("read")
    if not isinstance(pattern, str):
        raise SglTypeError(f"files.glob() pattern must be a str, not `{type_name(pattern)}`")
    granted = permissions.current.get()
    return sorted(p for p in _glob.glob(pattern, recursive=True) if granted.allows("read", p))


EXPORTS = {"read": read, "write": write, "glob": glob}
