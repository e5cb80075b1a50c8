"""The backend registry: URI forms, lazy imports, and the errors for unknown or missing backends."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import sgl_lang.backends as backends
from sgl_lang.backends import get_backend, local_target, reached_url
from sgl_lang.backends.local import LocalBackend
from sgl_lang.backends.openai import OpenAIBackend
from sgl_lang.backends.test import TestBackend
from sgl_lang.bridge.options import EngineOptions
from sgl_lang.protocol import SELECT_METHODS, BackendError, Regex

ROOT = Path(__file__).resolve().parents[2]


def test_test_backend_with_and_without_replies(tmp_path: Path) -> None:
    backend = get_backend("test")
    assert isinstance(backend, TestBackend) and backend.replies == []
    path = tmp_path / "r.json"
    path.write_text(json.dumps(["hi"]), encoding="utf-8")
    with_replies = get_backend(f"test:{path}")
    assert isinstance(with_replies, TestBackend) and [r.text for r in with_replies.replies] == [
        "hi"
    ]
    assert get_backend("test") is not backend  # a fresh backend per call


@pytest.mark.parametrize(
    ("uri", "module", "target"),
    [
        ("local", "local", ""),
        ("local:models/smol", "local", "models/smol"),
        ("local:C:/models/x.gguf", "local", "C:/models/x.gguf"),
        ("http://localhost:30000", "http", "http://localhost:30000"),
        ("https://example.com/sgl", "http", "https://example.com/sgl"),
        ("openai:gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("openai:llama@http://localhost:8000/v1", "openai", "llama@http://localhost:8000/v1"),
        ("anthropic:claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ("gemini:gemini-2.0-flash", "gemini", "gemini-2.0-flash"),
    ],
)
def test_each_uri_form_reaches_its_module(
    uri: str, module: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType(f"sgl_lang.backends.{module}")
    fake.create = lambda target, **options: ("created", target)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    assert get_backend(uri) == ("created", target)


def test_the_local_backend_gets_the_engine_options_and_the_default_model(tmp_path: Path) -> None:
    options = EngineOptions(kv_cache_gb=0.25, enable_cache=False, num_threads=1)
    backend = get_backend("local", engine_options=options, model=tmp_path)
    assert isinstance(backend, LocalBackend)
    assert (backend.options, backend.model_path) == (options, tmp_path)
    assert backend.name == f"local:{tmp_path}"
    named = get_backend(f"local:{ROOT}", engine_options=options, model=tmp_path)
    assert isinstance(named, LocalBackend)  # the URI's model wins over the default one
    assert (named.options, named.model_path) == (options, ROOT)
    plain = get_backend("local")
    assert isinstance(plain, LocalBackend)
    assert (plain.options, plain.model_path, plain.name) == (EngineOptions(), None, "local")


def test_backends_without_an_engine_here_ignore_engine_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As docs/backends.md says: one sgl.toml serves every backend, so an API backend is made
    as if no engine options and no model were given."""
    options = EngineOptions(kv_cache_gb=0.5, policy="fcfs")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    api = get_backend("openai:gpt-4o-mini", engine_options=options, model=tmp_path)
    assert isinstance(api, OpenAIBackend) and api.name == "openai:gpt-4o-mini"
    test = get_backend("test", engine_options=options, model=tmp_path)
    assert isinstance(test, TestBackend) and test.name == "test"
    fake = types.ModuleType("sgl_lang.backends.anthropic")
    fake.create = lambda target: ("created", target)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    assert get_backend("anthropic:claude", engine_options=options) == ("created", "claude")


@pytest.mark.parametrize(
    ("uri", "form"),
    [("openai:gpt-4o", "openai:"), ("http://h:1", "http://"), ("local", "local:")],
)
def test_a_missing_backend_module_is_not_available(
    uri: str, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheme = uri.partition(":")[0]
    monkeypatch.setitem(backends.BACKENDS, scheme, "sgl_lang.backends.not_installed_xyz:create")
    with pytest.raises(BackendError) as info:
        get_backend(uri)
    assert info.value.message == (
        f"backend `{form}` is not available in this installation "
        "(module `sgl_lang.backends.not_installed_xyz` is missing)"
    )


def test_other_import_errors_are_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_backend_xyz.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backends.BACKENDS, "openai", "broken_backend_xyz:create")
    with pytest.raises(ModuleNotFoundError) as info:
        get_backend("openai:gpt-4o")
    assert info.value.name == "no_such_dependency_xyz"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("opnai:gpt-4o", "unknown backend `opnai:gpt-4o`; did you mean `openai`?"),
        ("tset", "unknown backend `tset`; did you mean `test`?"),
        ("", "unknown backend ``"),
        ("ftp://host", "unknown backend `ftp://host`"),
        ("http:localhost", "malformed backend URI `http:localhost`: expected http://HOST:PORT"),
        ("https://", "malformed backend URI `https://`"),
        ("openai:", "backend `openai:` needs a model: write `openai:MODEL`"),
        ("vlm:x", "unknown backend `vlm:x`; did you mean `vllm`?"),
        ("test:", "backend `test:` has an empty path"),
    ],
)
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(BackendError) as info:
        get_backend(uri)
    assert info.value.message.startswith(message)


def test_unknown_backend_lists_the_known_forms() -> None:
    with pytest.raises(BackendError) as info:
        get_backend("llamacpp:x")
    assert "openai:MODEL@http://HOST:PORT/v1" in info.value.message
    assert "did you mean" not in info.value.message


@pytest.mark.parametrize("uri", ["vllm", "vllm:"])
def test_vllm_without_a_path_is_the_embedded_model_on_vllm(uri: str) -> None:
    """Creating it is cheap: vLLM is neither imported nor started."""
    backend = get_backend(uri)
    assert backend.name == "vllm" and backend.capabilities.enforces(Regex("a"))
    assert backend.capabilities.select_methods == frozenset(SELECT_METHODS)
    assert not backend.capabilities.images
    assert local_target(uri) is None and reached_url(uri) is None


def test_vllm_path_must_exist(tmp_path: Path) -> None:
    assert get_backend(f"vllm:{tmp_path}").name == f"vllm:{tmp_path}"
    with pytest.raises(BackendError, match="vllm model not found: /no/such/model"):
        get_backend("vllm:/no/such/model")


def test_vllm_is_refused_where_vllm_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match=r"needs vLLM, which is not installed here"):
        get_backend("vllm")


def test_importing_backends_imports_no_runtime() -> None:
    code = (
        "import sys, sgl_lang.backends as b; b.get_backend('test'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'numpy', 'transformers', 'httpx', 'openai', 'anthropic', 'vllm') "
        "or m.startswith('sgl_lang.runtime') or m in "
        "('sgl_lang.backends.local', 'sgl_lang.backends.http', 'sgl_lang.backends.openai')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == "[]\n"
