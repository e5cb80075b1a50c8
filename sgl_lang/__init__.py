"""sgl-lang: a language and runtime for LLM programs.

`sgl_lang.load(path, ...)` loads a `.sgl` program to run from Python (docs/python.md).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Program", "RunResult", "load"]


def __getattr__(name: str) -> Any:
    """The Python API, imported on first use: the command line and the packages below the app
    layer (the server, the runtime) import `sgl_lang` and must not load the app with it."""
    if name in __all__:
        return getattr(importlib.import_module("sgl_lang.api"), name)
    raise AttributeError(f"module 'sgl_lang' has no attribute {name!r}")
