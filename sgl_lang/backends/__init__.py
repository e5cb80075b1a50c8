"""Backends: where generation goes. `get_backend(uri, ...)` resolves a backend URI lazily.

Each URI scheme names a module of this package and a factory `create(target) -> Backend`; the
module is imported only when its scheme is used, so the language never imports torch or an
API client it does not need. A backend that runs an engine in this process (`ENGINE_SCHEMES`)
is created with `create(target, engine_options=..., model=...)` instead.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sgl_lang.protocol import Backend, BackendError

if TYPE_CHECKING:
    from sgl_lang.bridge.options import EngineOptions

__all__ = ["BACKENDS", "ENGINE_SCHEMES", "get_backend", "local_target", "reached_url"]

# scheme -> "module:factory". `test` and `local` take an optional target (`local:PATH`), the
# others need one; `http`/`https` receive the whole URI as their target.
BACKENDS: dict[str, str] = {
    "test": "sgl_lang.backends.test:create",
    "local": "sgl_lang.backends.local:create",
    "http": "sgl_lang.backends.http:create",
    "https": "sgl_lang.backends.http:create",
    "openai": "sgl_lang.backends.openai:create",
    "anthropic": "sgl_lang.backends.anthropic:create",
    "gemini": "sgl_lang.backends.gemini:create",
    "vllm": "sgl_lang.backends.vllm:create",
}
# their factories take engine options and a default model
ENGINE_SCHEMES = frozenset({"local", "vllm"})
_TARGET_OPTIONAL = frozenset({"test", "local", "vllm"})
_FORMS = (
    "test, test:PATH, local, local:PATH, vllm, vllm:PATH, http://HOST:PORT, openai:MODEL, "
    "openai:MODEL@http://HOST:PORT/v1, anthropic:MODEL, gemini:MODEL"
)
_TARGET_NAMES = {"openai": "MODEL", "anthropic": "MODEL", "gemini": "MODEL"}
# Schemes whose URI may name the server: their factories take `user_chosen` and send the
# user's key to that server only when the user (not a program) chose the URI.
_URL_SCHEMES = frozenset({"http", "https", "openai"})
# Where a URI without a server goes, unless the user's environment moves it (BASE_URL_ENVS).
PROVIDER_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
BASE_URL_ENVS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


def get_backend(
    uri: str,
    *,
    engine_options: EngineOptions | None = None,
    model: Path | None = None,
    user_chosen: bool = True,
) -> Backend:
    """A new backend for `uri` (docs/backends.md). `engine_options` (how its engine is built)
    and `model` (the model of a URI that names none, as plain `local` does) go to the
    backends of `ENGINE_SCHEMES`; the others ignore them, so one config file serves every
    backend. `user_chosen` is False for a URI a program wrote: then the user's API keys go
    only to their provider's own host, never to a server the URI names. Raises
    `BackendError` for an unknown or malformed URI, and for a scheme whose module is not
    part of this installation."""
    scheme, target = _split(uri)
    factory = _factory(scheme)
    if scheme in ENGINE_SCHEMES:
        return factory(target, engine_options=engine_options, model=model)
    if scheme in _URL_SCHEMES:
        return factory(target, user_chosen=user_chosen)
    return factory(target)


def reached_url(uri: str) -> str | None:
    """The URL of the server a backend URI sends prompts to, or None for a backend that runs
    here (`test`, `local`, `vllm`). Raises `BackendError` for a malformed URI."""
    scheme, target = _split(uri)
    if scheme in ENGINE_SCHEMES or scheme in _TARGET_OPTIONAL:
        return None
    if scheme in ("http", "https"):
        return target
    _, at, url = target.partition("?")[0].partition("@")
    if at and url:
        return url
    moved = os.environ.get(BASE_URL_ENVS.get(scheme, ""))
    return moved or PROVIDER_URLS[scheme]


def local_target(uri: str) -> str | None:
    """The file a `test:PATH`, `local:PATH` or `vllm:PATH` URI reads, else None."""
    scheme, target = _split(uri)
    return target if scheme in _TARGET_OPTIONAL and target else None


def _split(uri: str) -> tuple[str, str]:
    scheme, colon, target = uri.strip().partition(":")
    if scheme in ("http", "https"):
        if not target.startswith("//") or len(target) == 2:
            raise BackendError(f"malformed backend URI `{uri}`: expected {scheme}://HOST:PORT")
        return scheme, uri.strip()
    if scheme not in BACKENDS:
        close = difflib.get_close_matches(scheme, BACKENDS, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise BackendError(f"unknown backend `{uri}`{hint} (known forms: {_FORMS})")
    if not target and scheme not in _TARGET_OPTIONAL:
        raise BackendError(
            f"backend `{uri}` needs a {_TARGET_NAMES[scheme].lower()}: "
            f"write `{scheme}:{_TARGET_NAMES[scheme]}`"
        )
    if colon and not target and scheme in _TARGET_OPTIONAL and scheme != "vllm":  # `vllm:` ok
        raise BackendError(
            f"backend `{uri}` has an empty path: write `{scheme}` or `{scheme}:PATH`"
        )
    return scheme, target


def _factory(scheme: str) -> Callable[..., Backend]:
    module_name, _, factory_name = BACKENDS[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the backend module exists but something it imports is broken
        form = f"{scheme}://" if scheme in ("http", "https") else f"{scheme}:"
        raise BackendError(
            f"backend `{form}` is not available in this installation "
            f"(module `{module_name}` is missing)"
        ) from None
    return cast(Callable[..., Backend], getattr(module, factory_name))
