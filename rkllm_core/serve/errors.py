"""OpenAI-style error bodies, and which HTTP status each failure gets.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}``, the shape
the OpenAI clients parse into their typed exceptions (``BadRequestError``, ``NotFoundError``,
``RateLimitError`` …).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from .. import (
    AbortedError,
    ConfigError,
    ContextLengthError,
    ModelClosedError,
    RequestTimeoutError,
    RKLLMError,
    ToolCallParseError,
)


class APIError(Exception):
    """An HTTP error answer: status, OpenAI error type/code, the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def encoded(self) -> bytes:
        """The body as UTF-8 JSON."""
        return json.dumps(self.body(), ensure_ascii=False).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400 invalid_request_error."""
    return APIError(400, message, param=param, code=code)


def from_core(exc: BaseException) -> APIError:
    """The answer for an exception raised by the core (or anything unexpected)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, (ConfigError, ToolCallParseError)):
        return APIError(400, str(exc), code="invalid_value")
    if isinstance(exc, ModelClosedError):
        return APIError(
            503, "the server is shutting down; retry on another server",
            type="server_error", code="shutting_down", headers={"Retry-After": "1"},
        )
    if isinstance(exc, RequestTimeoutError):
        return APIError(504, str(exc), type="timeout_error", code="request_timeout")
    if isinstance(exc, AbortedError):
        return APIError(503, str(exc), type="server_error", code="aborted")
    if isinstance(exc, RKLLMError):
        return APIError(500, str(exc), type="server_error", code="generation_error")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


async def send_error(send: Callable[[dict], Awaitable[None]], error: APIError) -> None:
    """Send a whole JSON error answer on a raw ASGI channel."""
    body = error.encoded()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
