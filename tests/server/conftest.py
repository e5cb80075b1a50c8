"""Server fixtures: `sgl serve`'s app on the real SmolLM2 (one engine for the session), an
in-process ASGI client, and a live uvicorn server on a free 127.0.0.1 port in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from sgl_lang.runtime.config import EngineConfig
from sgl_lang.runtime.engine import Engine
from sgl_lang.runtime.model_loader import ModelNotFoundError, embedded_model_path
from sgl_lang.server.app import create_app
from sgl_lang.server.serving import ServedModel


@pytest.fixture(scope="session")
def served() -> Iterator[ServedModel]:
    """Its own engine (not the `local` backend's shared one, which other tests close)."""
    try:
        embedded_model_path()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    engine = Engine.from_model(None, EngineConfig(kv_cache_gb=0.25))
    yield ServedModel.of_engine(engine, "smollm")
    engine.close()


@pytest.fixture(scope="session")
def app(served: ServedModel) -> FastAPI:
    return create_app(served)


@pytest.fixture
def transport(app: FastAPI) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=app)


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:  # startup takes milliseconds
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


@pytest.fixture(scope="session")
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()
