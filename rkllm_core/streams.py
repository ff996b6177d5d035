"""Streams of one request: engine events → chunks for the caller, and the collected result.

Handlers run on the model's worker thread (stop strings are matched and the reply assembler
is fed there, so the engine stops at once); streams run on the caller's side, synchronously or
on an event loop. Streams know nothing of the model: they get the callables they need.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from .engine import ErrorEvent, Event, FinishEvent, TokenEvent
from .errors import GenerationError
from .queueing import Deliver
from .reply import ReplyAssembler
from .results import GenerationResult, StreamChunk
from .stops import StopMatcher

# --- handlers: engine events → what the caller consumes ----------------------------------


class GenerationHandler:
    """Applies stop strings and feeds the reply assembler on the worker thread.

    Only content the assembler releases is delivered as chunks; the whole generated text is
    kept in :attr:`text` for the result.
    """

    def __init__(self, deliver: Deliver, stops: Sequence[str], assembler: ReplyAssembler) -> None:
        self._deliver = deliver
        self._matcher = StopMatcher(stops)
        self.assembler = assembler
        self.token_ids: list[int] = []
        self._pieces: list[str] = []
        self.stopped_by_string = False

    @property
    def text(self) -> str:
        """The generated text (stop strings cut), read once the finish event was delivered."""
        return "".join(self._pieces)

    def _take(self, text: str, token_id: int | None) -> None:
        self._pieces.append(text)
        shown = self.assembler.push(text)
        if shown:
            self._deliver(StreamChunk(shown, token_id))

    def on_event(self, event: Event) -> bool:
        if not isinstance(event, TokenEvent):
            return True
        if event.token_id >= 0:
            self.token_ids.append(event.token_id)
        safe, stop = self._matcher.push(event.text)
        if safe:
            self._take(safe, event.token_id if event.token_id >= 0 else None)
        if stop:
            self.stopped_by_string = True
            return False
        return not self.assembler.complete

    def on_finish(self, event: FinishEvent | ErrorEvent) -> None:
        if isinstance(event, FinishEvent):
            tail = self._matcher.flush()
            if tail:
                self._take(tail, None)
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

Complete = Callable[[FinishEvent], tuple[GenerationResult, str]]
"""Finish event → (the result, content not streamed yet)."""


class _StreamState:
    """What sync and async streams share: the final result, and the request's controls.

    ``complete`` turns the finish event into the result (the model's bookkeeping included)
    and the content still to stream;
    ``fail`` is told when the request failed; ``cancel`` stops this request only.
    """

    def __init__(self, cancel: Callable[[], None], complete: Complete,
                 fail: Callable[[], None]) -> None:
        self._cancel = cancel
        self._complete = complete
        self._fail = fail
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._ended = False

    @property
    def done(self) -> bool:
        return self._ended

    def _accept(self, item: object) -> StreamChunk | None:
        """Process one channel item; return a chunk to yield, or None when finished."""
        if isinstance(item, StreamChunk):
            return item
        self._ended = True
        if isinstance(item, ErrorEvent):
            self._error = item.error
            self._fail()
            raise as_generation_error(item.error)
        if isinstance(item, FinishEvent):
            self._result, held = self._complete(item)
            # content held back while streaming (it might have been a tool call) and found
            # to be text: the last chunk, so the chunks always add up to the content
            return StreamChunk(held, None) if held else None
        raise GenerationError(f"unexpected event {item!r}")  # pragma: no cover

    def abort(self) -> None:
        """Stop this request (only this one) within one token."""
        self._cancel()


def as_generation_error(error: BaseException) -> BaseException:
    return error if isinstance(error, Exception) else GenerationError(repr(error))


class TokenStream(_StreamState, Iterator[StreamChunk]):
    """Iterator of :class:`StreamChunk` (the answer's content as it comes); :attr:`result`
    holds the collected :class:`GenerationResult` (content, tool calls, usage …) at the end.

    Leaving the loop early (``break``, an exception, ``close()``) cancels the request, so the
    model is free for the next caller.
    """

    def __init__(self, channel: Any, cancel: Callable[[], None], complete: Complete,
                 fail: Callable[[], None]) -> None:
        super().__init__(cancel, complete, fail)
        self._channel = channel

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> StreamChunk:
        while not self._ended:
            chunk = self._accept(self._channel.get())
            if chunk is not None:
                return chunk
        raise StopIteration

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

    def __init__(self, channel: asyncio.Queue[object], cancel: Callable[[], None],
                 complete: Complete, fail: Callable[[], None]) -> None:
        super().__init__(cancel, complete, fail)
        self._channel = channel

    def __aiter__(self) -> AsyncTokenStream:
        return self

    async def __anext__(self) -> StreamChunk:
        while not self._ended:
            try:
                item = await self._channel.get()
            except asyncio.CancelledError:
                self.abort()
                raise
            chunk = self._accept(item)
            if chunk is not None:
                return chunk
        raise StopAsyncIteration

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
