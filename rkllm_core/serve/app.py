"""The Starlette application: routes, model lifecycle, readiness.

The model is either given loaded (tests, embedding in another app) or loaded in the background
at startup, so ``/health`` answers while a large model loads and ``/ready`` says when it can
take requests. Requests are admitted against the bounded queue (:mod:`.admission`) and run
through the model's own async streams, one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import RKLLMModel
from .admission import Admission
from .auth import BearerAuth
from .config import ServeConfig
from .errors import APIError, bad_request, from_core
from .responses import EventStreamAnswer, JSONAnswer
from .schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .translate import (
    chat_chunk,
    chat_messages,
    chat_response,
    check_response_format,
    check_tools,
    completion_body,
    completion_choice,
    finish_reason,
    new_id,
    now,
    raise_for_model,
    sampling_kwargs,
    tool_call_body,
    usage_chunk,
)

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)
ModelSource = RKLLMModel | Callable[[], RKLLMModel]


class ServerState:
    """The model (once loaded), the queue and the names it is served under."""

    def __init__(self, source: ModelSource, config: ServeConfig, close_model: bool) -> None:
        self.config = config
        self.admission = Admission(config.max_queue)
        self.close_model = close_model
        self.model: RKLLMModel | None = source if isinstance(source, RKLLMModel) else None
        self._loader = None if isinstance(source, RKLLMModel) else source
        self.load_error: BaseException | None = None
        self.on_load_failure: Callable[[BaseException], None] | None = None
        self.created = now()

    async def load(self) -> None:
        """Load the model off the event loop (once)."""
        if self.model is not None or self._loader is None:
            return
        start = time.monotonic()
        try:
            self.model = await asyncio.to_thread(self._loader)
        except BaseException as exc:
            self.load_error = exc
            log.error("the model failed to load: %s", exc)
            if self.on_load_failure is not None:
                self.on_load_failure(exc)
            return
        log.info("model %s loaded in %.1f s", self.model.name, time.monotonic() - start)

    @property
    def served_names(self) -> tuple[str, ...]:
        """Names a request may use; the first is the one /v1/models lists."""
        names = list(self.config.served_names)
        if self.model is not None and self.model.name not in names:
            names.append(self.model.name)
        return tuple(names)

    def ready_model(self, requested: str) -> RKLLMModel:
        """The model for a request naming ``requested``; 404 / 503 when it cannot run."""
        if self.admission.draining:
            raise APIError(503, "the server is shutting down; retry on another server",
                           type="server_error", code="shutting_down",
                           headers={"Retry-After": "1"})
        if self.model is None:
            if self.load_error is not None:
                raise APIError(503, f"the model failed to load: {self.load_error}",
                               type="server_error", code="model_load_failed")
            raise APIError(503, "the model is still loading; retry shortly (GET /ready)",
                           type="server_error", code="model_loading",
                           headers={"Retry-After": "5"})
        raise_for_model(requested, self.served_names)
        return self.model


async def parse_body(request: Request, schema: type[Body]) -> Body:
    """The request's JSON body validated against ``schema``; 400 in OpenAI's shape if not."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(
            f"the request body is not valid JSON ({exc}); send a JSON object with"
            " 'Content-Type: application/json'", code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        raise bad_request(f"{param}: {error['msg']}", param=param,
                          code="missing_required_parameter" if error["type"] == "missing"
                          else "invalid_value") from None


# --- chat completions ------------------------------------------------------------------------


def _chat_call(model: RKLLMModel, body: ChatCompletionRequest,
               timeout: float | None) -> Callable[[], Any]:
    """Validate what the server can up front; return what starts the model's async stream.

    Tools, tool_choice and response_format go to the core as they are: it plans the reply
    (forced calls, JSON prefill), holds tool-call markup back while content streams, and
    parses the calls, as for every framework adapter.
    """
    kwargs = sampling_kwargs(body)
    messages = chat_messages(body.messages)
    tools = check_tools(body.tools)
    response_format = check_response_format(body.response_format)
    if body.tool_choice is not None and not tools and body.tool_choice != "none":
        raise bad_request("tool_choice needs tools", param="tool_choice")

    def start() -> Any:
        return model.astream(messages, tools=tools, tool_choice=body.tool_choice,
                             response_format=response_format, timeout=timeout, **kwargs)

    return start


async def _chat_events(start: Callable[[], Any], body: ChatCompletionRequest, rid: str,
                       created: int) -> AsyncIterator[dict]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    name = body.model
    stream = start()
    try:
        pieces = aiter(stream)
        first = await anext(pieces, None)  # the request has started (or failed) by now
        yield chat_chunk(rid, created, name, {"role": "assistant", "content": ""},
                         with_usage=include_usage)
        if first is not None and first.text:
            yield chat_chunk(rid, created, name, {"content": first.text},
                             with_usage=include_usage)
        async for piece in pieces:
            if piece.text:
                yield chat_chunk(rid, created, name, {"content": piece.text},
                                 with_usage=include_usage)
        result = await stream.aresult()
        if result.tool_calls:
            calls = [tool_call_body(c, i) for i, c in enumerate(result.tool_calls)]
            yield chat_chunk(rid, created, name, {"tool_calls": calls}, with_usage=include_usage)
        yield chat_chunk(rid, created, name, {}, finish_reason(result), with_usage=include_usage)
        if include_usage:
            yield usage_chunk(rid, created, name, result.usage, "chat.completion.chunk")
    finally:
        await stream.aclose()


async def chat_completions(request: Request) -> Any:
    state: ServerState = request.app.state.server
    body = await parse_body(request, ChatCompletionRequest)
    model = state.ready_model(body.model)
    start = _chat_call(model, body, state.config.request_timeout_s)
    rid, created = new_id("chatcmpl"), now()
    ticket = state.admission.acquire()
    if body.stream:
        return EventStreamAnswer(_chat_events(start, body, rid, created), ticket)

    async def compute() -> dict:
        stream = start()
        try:
            result = await stream.aresult()
        finally:
            await stream.aclose()
        return chat_response(rid, created, body.model, result)

    return JSONAnswer(compute, ticket)


# --- text completions ------------------------------------------------------------------------


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


async def _completion_events(model: RKLLMModel, prompts: list, kwargs: dict,
                             timeout: float | None, body: CompletionRequest, rid: str,
                             created: int) -> AsyncIterator[dict]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prompt_tokens = completion_tokens = 0
    for index, prompt in enumerate(prompts):
        stream = model.astream(prompt, timeout=timeout, **kwargs)
        try:
            async for piece in stream:
                if piece.text:
                    yield completion_body(rid, created, body.model,
                                          [completion_choice(index, piece.text, None)], None)
            result = await stream.aresult()
        finally:
            await stream.aclose()
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        yield completion_body(rid, created, body.model,
                              [completion_choice(index, "", finish_reason(result))], None)
    if include_usage:
        yield completion_body(rid, created, body.model, [], {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })


async def completions(request: Request) -> Any:
    state: ServerState = request.app.state.server
    body = await parse_body(request, CompletionRequest)
    model = state.ready_model(body.model)
    kwargs = sampling_kwargs(body)
    prompts = _prompts(body.prompt)
    timeout = state.config.request_timeout_s
    rid, created = new_id("cmpl"), now()
    ticket = state.admission.acquire()
    if body.stream:
        return EventStreamAnswer(
            _completion_events(model, prompts, kwargs, timeout, body, rid, created), ticket
        )

    async def compute() -> dict:
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            stream = model.astream(prompt, timeout=timeout, **kwargs)
            try:
                result = await stream.aresult()
            finally:
                await stream.aclose()
            choices.append(completion_choice(index, result.text, finish_reason(result)))
            prompt_tokens += result.usage.prompt_tokens
            completion_tokens += result.usage.completion_tokens
        return completion_body(rid, created, body.model, choices, {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })

    return JSONAnswer(compute, ticket)


# --- embeddings ------------------------------------------------------------------------------


def _embedding_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, str) for v in value):
        return list(value)
    if not value:
        raise bad_request("input is empty", param="input")
    raise bad_request(
        "input must be text (a string or a list of strings): token ids from another tokenizer"
        " mean nothing to this model. With LangChain's OpenAIEmbeddings set"
        " check_embedding_ctx_length=False", param="input",
    )


async def embeddings(request: Request) -> Any:
    state: ServerState = request.app.state.server
    if state.config.embeddings == "off":
        raise APIError(404, "embeddings are turned off on this server (--embeddings off)",
                       code="embeddings_disabled")
    body = await parse_body(request, EmbeddingRequest)
    model = state.ready_model(body.model)
    texts = _embedding_texts(body.input)
    hidden = model.info.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise bad_request(
            f"dimensions={body.dimensions} is not available: this model's embeddings have"
            f" {hidden} dimensions", param="dimensions",
        )
    overrides: dict[str, Any] = {}
    if state.config.embeddings != "default":
        overrides["strategy"] = state.config.embeddings
    is_query = body.input_type == "query"
    ticket = state.admission.acquire()

    def run() -> tuple[np.ndarray, int]:
        vectors = model.embed(texts, is_query=is_query, **overrides)
        tokens = sum(len(model.tokenize(t)) for t in texts) if model.tokenizer else 0
        return vectors, tokens

    async def compute() -> dict:
        vectors, tokens = await asyncio.to_thread(run)
        data = []
        for index, row in enumerate(vectors):
            if body.encoding_format == "base64":
                value: Any = base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
            else:
                value = [float(x) for x in row]
            data.append({"object": "embedding", "index": index, "embedding": value})
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return JSONAnswer(compute, ticket)


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
