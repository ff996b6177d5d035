"""The Starlette application: routes, model lifecycle, readiness, error answers.

The model is either given loaded (tests, embedding in another app) or loaded in the background
at startup, so ``/health`` answers while a large model loads and ``/ready`` says when it can
take requests. Requests are admitted against the bounded queue (:mod:`.admission`) and run
through the model's own async streams, one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import BearerAuth
from .chat import chat_completions
from .completions import completions
from .config import ServeConfig
from .embeddings import embeddings
from .errors import APIError, from_core
from .state import ModelSource, ServerState
from .translate import raise_for_model

log = logging.getLogger(__name__)


# --- models, health, readiness ---------------------------------------------------------------


def _model_card(state: ServerState, name: str) -> dict:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "rkllm-py"}


async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    names = state.served_names[:1] if state.model is not None else state.config.served_names[:1]
    return JSONResponse({"object": "list", "data": [_model_card(state, n) for n in names]})


async def get_model(request: Request) -> Response:
    state: ServerState = request.app.state.server
    name = request.path_params["name"]
    raise_for_model(name, state.served_names or ("",))
    return JSONResponse(_model_card(state, name))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state: ServerState = request.app.state.server
    admission = state.admission
    facts: dict[str, Any] = {
        "model": state.served_names[0] if state.served_names else None,
        "loaded": state.model is not None,
        "queue_depth": admission.waiting,
        "running": min(1, admission.admitted),
        "max_queue": admission.max_queue,
        "rejected_total": admission.refused,
    }
    if admission.draining:
        return JSONResponse({"status": "draining", **facts}, status_code=503)
    if state.model is None:
        status = "failed" if state.load_error is not None else "loading"
        return JSONResponse({"status": status, **facts}, status_code=503)
    return JSONResponse({"status": "ready", **facts})


# --- the application -------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    error = from_core(exc)
    return Response(error.encoded(), status_code=error.status, headers=error.headers,
                     media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                     code="not_found" if exc.status_code == 404 else None)
    return Response(error.encoded(), status_code=error.status, headers=exc.headers,
                    media_type="application/json")


def create_app(model: ModelSource, config: ServeConfig | None = None, *,
               close_model: bool = True) -> Starlette:
    """The ASGI app serving ``model`` (loaded, or a function that loads it at startup).

    ``close_model``: close the model when the app shuts down (off when the caller owns it).
    """
    config = config or ServeConfig()
    state = ServerState(model, config, close_model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.ensure_future(state.load())
        try:
            yield
        finally:
            state.admission.draining = True
            await loading  # a load in progress cannot be interrupted: let it end, then close
            if state.close_model and state.model is not None:
                await asyncio.to_thread(state.model.close)
                log.info("model closed")

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: _api_error, HTTPException: _http_error,
                            Exception: _api_error},
    )
    app.state.server = state
    if config.api_key:
        app.add_middleware(BearerAuth, api_key=config.api_key)
    return app


def server_state(app: Starlette) -> ServerState:
    """The state of an app made by :func:`create_app`."""
    return app.state.server
