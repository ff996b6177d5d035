"""Streams of one request: engine events → chunks for the caller, and the collected result.

Handlers run on the model's worker thread (stop strings are matched there, so the engine stops
at once); streams run on the caller's side, synchronously or on an event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .engine import ErrorEvent, Event, FinishEvent, TokenEvent
from .errors import GenerationError
from .queueing import Deliver, Job
from .results import GenerationResult, StreamChunk
from .stops import StopMatcher

if TYPE_CHECKING:
    from .model import RKLLMModel


# --- handlers: engine events → what the caller consumes ----------------------------------


class GenerationHandler:
    """Applies stop strings on the worker thread so the engine stops at once."""

    def __init__(self, deliver: Deliver, stops: Sequence[str]) -> None:
        self._deliver = deliver
        self._matcher = StopMatcher(stops)
        self.token_ids: list[int] = []
        self.stopped_by_string = False

    def on_event(self, event: Event) -> bool:
        if not isinstance(event, TokenEvent):
            return True
        if event.token_id >= 0:
            self.token_ids.append(event.token_id)
        safe, stop = self._matcher.push(event.text)
        if safe:
            self._deliver(StreamChunk(safe, event.token_id if event.token_id >= 0 else None))
        if stop:
            self.stopped_by_string = True
            return False
        return True

    def on_finish(self, event: FinishEvent | ErrorEvent) -> None:
        if isinstance(event, FinishEvent):
            tail = self._matcher.flush()
            if tail:
                self._deliver(StreamChunk(tail, None))
            if self.stopped_by_string:
                event = replace(event, reason="stop")
        self._deliver(event)


class CollectHandler:
    """Forwards hidden states / logits as they come."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def on_event(self, event: Event) -> bool:
        self._deliver(event)
        return True

    def on_finish(self, event: FinishEvent | ErrorEvent) -> None:
        self._deliver(event)


# --- streams --------------------------------------------------------------------------------


class _StreamState:
    """What sync and async streams share: collected text and the final result."""

    def __init__(self, model: RKLLMModel, job: Job, handler: GenerationHandler, ctx: Turn):
        self._model = model
        self._job = job
        self._handler = handler
        self._ctx = ctx
        self._pieces: list[str] = []
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def _accept(self, item: object) -> StreamChunk | None:
        """Process one channel item; return a chunk to yield, or None when finished."""
        if isinstance(item, StreamChunk):
            self._pieces.append(item.text)
            return item
        if isinstance(item, ErrorEvent):
            self._error = item.error
            self._model._turn_failed(self._ctx)
            raise as_generation_error(item.error)
        if isinstance(item, FinishEvent):
            self._result = self._model._finish_turn(
                self._ctx, "".join(self._pieces), tuple(self._handler.token_ids), item,
                self._handler.stopped_by_string,
            )
            return None
        raise GenerationError(f"unexpected event {item!r}")  # pragma: no cover

    def abort(self) -> None:
        """Stop this request (only this one) within one token."""
        self._model._worker.cancel(self._job)


def as_generation_error(error: BaseException) -> BaseException:
    return error if isinstance(error, Exception) else GenerationError(repr(error))


class TokenStream(_StreamState, Iterator[StreamChunk]):
    """Iterator of :class:`StreamChunk`; :attr:`result` holds the collected result at the end.

    Leaving the loop early (``break``, an exception, ``close()``) cancels the request, so the
    model is free for the next caller.
    """

    def __init__(self, model: RKLLMModel, job: Job, handler: GenerationHandler, ctx: Turn,
                 channel: Any) -> None:
        super().__init__(model, job, handler, ctx)
        self._channel = channel

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> StreamChunk:
        if self.done:
            raise StopIteration
        chunk = self._accept(self._channel.get())
        if chunk is None:
            raise StopIteration
        return chunk

    @property
    def result(self) -> GenerationResult:
        """The whole result; consumes the rest of the stream if needed."""
        for _ in self:
            pass
        if self._error is not None:
            raise as_generation_error(self._error)
        assert self._result is not None
        return self._result

    def close(self) -> None:
        """Cancel the request if it has not finished."""
        if not self.done:
            self.abort()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class AsyncTokenStream(_StreamState, AsyncIterator[StreamChunk]):
    """Async iterator of :class:`StreamChunk` that never blocks the event loop."""

    def __init__(self, model: RKLLMModel, job: Job, handler: GenerationHandler, ctx: Turn,
                 channel: asyncio.Queue[object]) -> None:
        super().__init__(model, job, handler, ctx)
        self._channel = channel

    def __aiter__(self) -> AsyncTokenStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self.done:
            raise StopAsyncIteration
        try:
            item = await self._channel.get()
        except asyncio.CancelledError:
            self.abort()
            raise
        chunk = self._accept(item)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aresult(self) -> GenerationResult:
        """The whole result; consumes the rest of the stream if needed."""
        async for _ in self:
            pass
        if self._error is not None:
            raise as_generation_error(self._error)
        assert self._result is not None
        return self._result

    async def aclose(self) -> None:
        """Cancel the request if it has not finished."""
        if not self.done:
            self.abort()


class Turn:
    """Bookkeeping of one generate call (for multi-turn history and tool parsing)."""

    def __init__(self, prompt_text: str | None, messages: list[dict] | None, keep_history: bool,
                 parse_tools: bool, role: str | None = None) -> None:
        self.role = role  # the runtime's input role, when the runtime renders the turn
        self.prompt_text = prompt_text
        self.messages = messages
        self.keep_history = keep_history
        self.parse_tools = parse_tools
