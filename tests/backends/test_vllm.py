"""The `vllm:` backend where vLLM is missing: a clear error naming the alternatives."""

from __future__ import annotations

import importlib.util

import pytest

from sgl_lang.backends import get_backend
from sgl_lang.protocol import BackendError


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_the_backend_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match=r"needs vLLM, which is not installed here.*local:PATH"):
        get_backend("vllm:/models/llama")
