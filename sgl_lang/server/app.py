"""`sgl serve`: the runtime behind HTTP (FastAPI), one engine shared by every client.

The routes are SGLang's native ones (`native.py`) and OpenAI's (`openai_routes.py`). Every
error is a JSON body `{"error": {"message", "type", "code"}}` with a 4xx status (5xx only for
server faults); a request that fails never affects another, and a client that disconnects
cancels its request, which frees its KV slots. The front door (`guard.py`) checks the `Host`
header, the API key (on every path, /docs and /openapi.json included, but /health) and the
body size before any route runs; then `envelope.py` opens a native request sent inside a
`/v1/completions` one (how the `http` backend goes through SGLang's router).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from sgl_lang.bridge.options import EngineOptions
from sgl_lang.protocol import BackendError, BackendUnavailable
from sgl_lang.server import native, openai_routes
from sgl_lang.server.envelope import Envelope
from sgl_lang.server.guard import MAX_BODY_BYTES, Guard, GuardConfig, default_allowed_hosts
from sgl_lang.server.serving import ClientGone, ServedModel, error_body

API_KEY_ENV = "SGL_API_KEY"


def create_app(
    model: ServedModel,
    *,
    api_key: str | None = None,
    allowed_hosts: Collection[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The server's ASGI app on `model`. `api_key` (else `$SGL_API_KEY`) is required as a
    bearer token or `x-api-key` on every path but /health; `allowed_hosts` (None: any) are
    the `Host` names answered; a body over `max_body_bytes` is refused with 413."""
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    app = FastAPI(title="sgl serve")
    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app.add_middleware(Envelope)  # the last added runs first: the guard, then the envelope
    app.add_middleware(Guard, config=GuardConfig(api_key, hosts, max_body_bytes))
    app.state.model = model
    _add_error_handlers(app)
    app.include_router(native.router(model))
    app.include_router(openai_routes.router(model))
    return app


def serve(
    model_path: Path | None,
    host: str = "127.0.0.1",
    port: int = 30000,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    engine_options: EngineOptions | None = None,
    allowed_hosts: Collection[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Load the model and serve until interrupted (blocking). Bound to a loopback address,
    the server answers only the loopback `Host` names and `allowed_hosts`."""
    import uvicorn

    model = ServedModel.load(model_path, model_name, engine_options)
    app = create_app(
        model,
        api_key=api_key,
        allowed_hosts=default_allowed_hosts(host, allowed_hosts),
        max_body_bytes=max_body_bytes,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(error_body(problems, 400), status_code=400)

    @app.exception_handler(HTTPException)  # FastAPI's and Starlette's (404, 405)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), exc.status_code), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def server_fault(_: Request, exc: Exception) -> JSONResponse:
        message = f"internal server error ({type(exc).__name__})"
        return JSONResponse(error_body(message, 500, "server_error"), status_code=500)

    @app.exception_handler(BackendError)
    async def backend_error(_: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, 400), status_code=400)

    @app.exception_handler(BackendUnavailable)  # the engine cannot serve: not the request's fault
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse(error_body(exc.message, 503, "server_error"), status_code=503)

    @app.exception_handler(ClientGone)
    async def gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)
