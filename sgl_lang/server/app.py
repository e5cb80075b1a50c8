"""`sgl serve`: the runtime behind HTTP (FastAPI), one engine shared by every client.

The routes are SGLang's native ones (`native.py`) and OpenAI's (`openai_routes.py`). Every
error is a JSON body `{"error": {"message", "type", "code"}}` with a 4xx status (5xx only for
server faults); a request that fails never affects another, and a client that disconnects
cancels its request, which frees its KV slots.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from sgl_lang.protocol import BackendError
from sgl_lang.server import native, openai_routes
from sgl_lang.server.serving import ClientGone, ServedModel, error_body

API_KEY_ENV = "SGL_API_KEY"
OPEN_PATHS = frozenset({"/health"})


def create_app(model: ServedModel, *, api_key: str | None = None) -> FastAPI:
    """The server's ASGI app on `model` (`api_key`, else `$SGL_API_KEY`: required as a
    bearer token or `x-api-key` on every path but /health)."""
    api_key = api_key or os.environ.get(API_KEY_ENV) or None

    async def check_key(request: Request) -> None:
        if api_key is None or request.url.path in OPEN_PATHS:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        if given.removeprefix("Bearer ").strip() != api_key:
            raise HTTPException(401, "missing or wrong API key")

    app = FastAPI(title="sgl serve", dependencies=[Depends(check_key)])
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
) -> None:
    """Load the model and serve until interrupted (blocking)."""
    import uvicorn

    model = ServedModel.load(model_path, model_name)
    uvicorn.run(create_app(model, api_key=api_key), host=host, port=port, log_level="info")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(error_body(problems, 400), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), exc.status_code)

    @app.exception_handler(BackendError)
    async def backend_error(_: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, 400), status_code=400)

    @app.exception_handler(ClientGone)
    async def gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)
