"""Answers that watch the client: a request whose client has gone is aborted at once.

Both kinds run the work and a watcher for ``http.disconnect`` side by side; when the client
goes first the work is cancelled, which aborts the model's request within one token (the core
stream aborts its job when its wait is cancelled). Streams send nothing until the first event
is ready, so an error found when the request starts (a context overflow, a bad template) is
still a proper HTTP error, not a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from .admission import Ticket
from .errors import APIError, from_core, send_error

log = logging.getLogger(__name__)

Sender = Callable[[dict], Awaitable[None]]


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class WatchedAnswer:
    """Base: run :meth:`_run` until done or the client disconnects; release the ticket."""

    def __init__(self, ticket: Ticket | None) -> None:
        self._ticket = ticket
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = asyncio.ensure_future(self._run(send))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                self.disconnected = True
                log.info("client disconnected: request aborted")
                work.cancel()
        finally:
            watch.cancel()
            work.cancel()  # no-op when done; when this task was cancelled, stop the work too
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(work, watch, return_exceptions=True)
            await self._cleanup()
            if self._ticket is not None:
                self._ticket.release()
        if work.done() and not work.cancelled() and work.exception() is not None:
            log.error("answer failed", exc_info=work.exception())

    async def _run(self, send: Sender) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _cleanup(self) -> None:
        pass


class JSONAnswer(WatchedAnswer):
    """A whole JSON answer computed by ``compute``."""

    def __init__(self, compute: Callable[[], Awaitable[dict]], ticket: Ticket | None) -> None:
        super().__init__(ticket)
        self._compute = compute

    async def _run(self, send: Sender) -> None:
        try:
            body = await self._compute()
        except Exception as exc:
            await send_error(send, _logged(exc))
            return
        payload = encode_json(body)
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode())],
        })
        await send({"type": "http.response.body", "body": payload})


class EventStreamAnswer(WatchedAnswer):
    """Server-sent events, one JSON object each, ending with ``data: [DONE]``."""

    def __init__(self, events: AsyncIterator[dict], ticket: Ticket | None) -> None:
        super().__init__(ticket)
        self._events = events

    async def _run(self, send: Sender) -> None:
        events = self._events
        try:
            first = await anext(events, None)
        except Exception as exc:
            await send_error(send, _logged(exc))
            return
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")],
        })
        if first is None:
            await self._end(send)
            return
        await self._send_event(send, first)
        try:
            async for event in events:
                await self._send_event(send, event)
        except Exception as exc:
            # headers are gone: the error travels as an event, as OpenAI's API does it
            await self._send_event(send, _logged(exc).body())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._end(send)

    @staticmethod
    async def _send_event(send: Sender, event: dict) -> None:
        await send({"type": "http.response.body", "body": b"data: " + encode_json(event) + b"\n\n",
                    "more_body": True})

    @staticmethod
    async def _end(send: Sender) -> None:
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})

    async def _cleanup(self) -> None:
        close = getattr(self._events, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


def _logged(exc: BaseException) -> APIError:
    error = from_core(exc)
    if error.status >= 500:
        log.error("request failed: %s", error.message, exc_info=exc)
    return error
