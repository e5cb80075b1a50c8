"""The engines of this process: one per model and engine options, loaded on first use and
shared by every `local` backend on them (`sgl run --batch` and the REPL create backends
repeatedly) and by `sgl serve`; closed at exit."""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from sgl_lang.bridge.engine import BridgedEngine
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.protocol import BackendError

EngineKey = tuple[str | None, EngineOptions]  # resolved model path (None: embedded), options
_ENGINES: dict[EngineKey, BridgedEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_key(model_path: Path | None, options: EngineOptions) -> EngineKey:
    return None if model_path is None else str(model_path.resolve()), options


def loaded_engine(key: EngineKey) -> BridgedEngine | None:
    """The engine of `key` if it is loaded (loads nothing)."""
    return _ENGINES.get(key)


def shared_engine(model_path: Path | None, options: EngineOptions | None = None) -> BridgedEngine:
    """The engine of `model_path` (None: the embedded model) with `options`, loading it if
    nobody has yet (blocking: call it in a worker thread from async code)."""
    options = options or EngineOptions()
    key = engine_key(model_path, options)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            from sgl_lang.runtime.config import EngineConfig
            from sgl_lang.runtime.engine import Engine

            try:
                config = EngineConfig(**options.engine_fields())
                engine = Engine.from_model(model_path, config)
            except (OSError, RuntimeError, ValueError) as exc:
                where = "the embedded model" if model_path is None else f"`{model_path}`"
                raise BackendError(f"cannot load {where}: {exc}") from None
            if not _ENGINES:
                atexit.register(close_engines)
            _ENGINES[key] = BridgedEngine(engine)
        return _ENGINES[key]


def close_engines() -> None:
    """Close every shared engine (at exit; a later call loads the model again)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for bridged in engines:
        bridged.engine.close()
