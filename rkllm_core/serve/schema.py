"""OpenAI request bodies, as the server accepts them.

Unknown fields are ignored (clients send many optional ones, e.g. ``user``, ``metadata``,
``store``); fields this server cannot honour with a non-default value (``n > 1``,
``logprobs``, ``logit_bias``, ``best_of``, ``echo``, ``suffix``) are refused with a 400 naming
the field. Besides OpenAI's own sampling fields, the llama.cpp ones the core takes (``top_k``,
``repeat_penalty``, ``mirostat*``) are accepted as extensions, as vLLM and llama.cpp servers do.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError, bad_request

if TYPE_CHECKING:
    from starlette.requests import Request


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    """``stream_options``."""

    include_usage: bool = False


class SamplingFields(_Body):
    """Sampling fields shared by chat and text completions (OpenAI names)."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None
    # extensions: the core's (llama.cpp's) sampling fields
    top_k: int | None = None
    repeat_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``.

    ``input_type`` is an extension (as in several hosted embedding APIs): ``"query"`` embeds
    the texts as retrieval queries (the model's query instruction is prefixed, as
    ``embed_query`` does in the frameworks); the default embeds them as documents.
    """

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    input_type: Literal["query", "document", "passage"] | None = None


Body = TypeVar("Body", bound=BaseModel)


def parse_body(raw: bytes, schema: type[Body]) -> Body:
    """A JSON request body validated against ``schema``; a 400 in OpenAI's shape if not."""
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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (memory stays bounded)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes (--max-body-mb)",
                    code="request_too_large")
