"""``POST /v1/embeddings``: the model's hidden-state embeddings, as the frameworks compute them."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from starlette.requests import Request

from .errors import APIError, bad_request
from .responses import JSONAnswer
from .schema import EmbeddingRequest, parse_body, read_body
from .state import ServerState


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
    raw = await read_body(request, state.config.max_body_bytes)
    body = parse_body(raw, EmbeddingRequest)
    model = state.ready_model(body.model)
    texts = _embedding_texts(body.input)
    overrides: dict[str, Any] = {}
    if state.config.embeddings != "default":
        overrides["strategy"] = state.config.embeddings
    if body.dimensions is not None:
        # the first call may embed the model's reference sample: off the event loop
        size = await asyncio.to_thread(model.embedding_dimension, None, **overrides)
        if body.dimensions != size:
            raise bad_request(
                f"dimensions={body.dimensions} is not available: this model's embeddings have"
                f" {size} dimensions", param="dimensions",
            )
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
