"""The deterministic `test` backend: no model; checks the harness and the programs."""

from __future__ import annotations

from sgl_lang.backends import get_backend
from sgl_lang.protocol import Backend

from .base import System


class TestSystem(System):
    name = "test"
    description = "the deterministic test backend (no model)"

    def backend(self) -> Backend:
        return get_backend("test")
