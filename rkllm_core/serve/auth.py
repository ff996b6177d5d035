"""``--api-key``: every path but ``/health`` needs ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import APIError, send_error

OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    """ASGI middleware comparing the bearer token in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            error = APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the"
                " server was started with (--api-key)",
                code="invalid_api_key",
            )
            await send_error(send, error)
            return
        await self.app(scope, receive, send)

