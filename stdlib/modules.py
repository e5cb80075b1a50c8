"""`import NAME` for standard-library modules: a lazy registry from names to `Module` values."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

from sgl_lang.errors import SglImportError

_FILES = {
    "re": "re",
    "text": "text",
    "math": "math",
    "calc": "calc",
    "web": "web",
    "files": "files",
    "retrieval": "retrieval",
    "python": "python",
}
"""Language name -> the file in `stdlib/` (imported as `sgl_lang.stdlib.<file>`) defining `EXPORTS`."""


class Module:
    """An imported standard-library module: programs may access exactly its export names."""

    type_name: ClassVar[str] = "module"

    def __init__(self, name: str, exports: dict[str, Any]) -> None:
        clash = {"name", "exports"} & exports.keys()
        if clash:
            raise ValueError(f"module {name!r} cannot export {sorted(clash)}")
        self.name = name
        self.exports = exports

    @property
    def sgl_attributes(self) -> frozenset[str]:
        """The names `.sgl` programs may read: the module's exports."""
        return frozenset(self.exports)

    def __getattr__(self, attr: str) -> Any:
        exports = self.__dict__.get("exports", {})
        if attr in exports:
            return exports[attr]
        raise AttributeError(attr)

    def __str__(self) -> str:
        return f"<module {self.name}>"

    __repr__ = __str__


_loaded: dict[str, Module] = {}


def load_module(name: str) -> Module:
    """The standard-library module `name`, imported on first use; `SglImportError` if unknown."""
    if name not in _FILES:
        close = difflib.get_close_matches(name, sorted(_FILES), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise SglImportError(f"no standard-library module named `{name}`{hint}")
    if name not in _loaded:
        source = importlib.import_module(f"sgl_lang.stdlib.{_FILES[name]}")
        exports: dict[str, Callable[..., Any] | Any] = source.EXPORTS
        _loaded[name] = Module(name, exports)
    return _loaded[name]
