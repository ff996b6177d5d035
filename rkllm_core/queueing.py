"""One worker thread per model: requests run one at a time, in arrival order.

Each request is a :class:`Job` whose events flow through its own channel (a thread queue, or
an asyncio queue fed with ``call_soon_threadsafe`` so the event loop never blocks). A job can
be cancelled by its owner at any time: before it starts it is skipped, while it runs the
engine is asked to stop before the next token.

A job may carry a deadline (``timeout`` seconds from submission, queue time included): a job
whose deadline passes while it waits fails at once with :class:`RequestTimeoutError` and never
reaches the engine; a running one is aborted at the deadline (during prefill too, not only
when the next token arrives) and fails the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from .engine import Engine, ErrorEvent, Event, FinishEvent, Request
from .errors import ModelClosedError, RequestTimeoutError

log = logging.getLogger(__name__)

Deliver = Callable[[object], None]


class Handler(Protocol):
    """Turns engine events into what the caller consumes (and decides when to stop)."""

    def on_event(self, event: Event) -> bool:
        """Handle a non-terminal event; return False to stop the engine."""
        ...

    def on_finish(self, event: FinishEvent | ErrorEvent) -> None:
        """Handle the terminal event (called exactly once)."""
        ...


class Job:
    """A queued request and the handler that receives its events."""

    _ids = itertools.count()

    def __init__(self, request: Request, handler: Handler, timeout: float | None = None) -> None:
        self.id = next(self._ids)
        self.request = request
        self.handler = handler
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.timed_out = threading.Event()
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self._finish_lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def timeout_error(self) -> RequestTimeoutError:
        """The error a caller gets when this job outlives its deadline."""
        return RequestTimeoutError(
            f"the request took longer than timeout={self.timeout}s (time waiting in the queue"
            " counts); raise timeout or lower max_new_tokens"
        )

    def emit(self, event: Event) -> bool:
        """Sink protocol: called on the worker thread by the engine."""
        if self.finished.is_set():
            return False
        if isinstance(event, (FinishEvent, ErrorEvent)):
            with self._finish_lock:  # the deadline timer may finish a queued job concurrently
                if self.finished.is_set():
                    return False
                self.finished.set()
            if self.timer is not None:
                self.timer.cancel()
            if isinstance(event, FinishEvent) and self.timed_out.is_set():
                event = ErrorEvent(self.timeout_error())
            elif isinstance(event, FinishEvent) and self.cancelled.is_set():
                event = replace(event, reason="abort")  # the engine saw only "stop asked"
            self.handler.on_finish(event)
            return False
        if self.cancelled.is_set() or self.timed_out.is_set():
            return False
        return self.handler.on_event(event) and not (
            self.cancelled.is_set() or self.timed_out.is_set()
        )


class CallJob:
    """A plain function to run on the worker thread in queue order (cache clears, LoRA…)."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # carried to the caller
            self.error = exc
        finally:
            self.done.set()

    def wait(self) -> object:
        """Block until run; return its value or raise its error."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Worker:
    """Runs jobs on a single daemon thread against one engine."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._queue: queue.Queue[Job | CallJob | None] = queue.Queue()
        self._current: Job | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"rkllm-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job | CallJob) -> None:
        """Queue a job (FIFO); a job with a deadline is watched from now on."""
        with self._lock:
            if self._closed:
                raise ModelClosedError("the model is closed; create a new RKLLMModel")
            if isinstance(job, Job) and job.deadline is not None:
                remaining = max(0.0, job.deadline - time.monotonic())
                job.timer = threading.Timer(remaining, self._expire, (job,))
                job.timer.daemon = True
                job.timer.start()
            self._queue.put(job)

    def _expire(self, job: Job) -> None:
        """The deadline passed: fail a waiting job now, abort a running one now."""
        if job.finished.is_set():
            return
        job.timed_out.set()
        with self._lock:
            running = self._current is job
            if not running:
                # Still queued: the caller hears at once, and the worker will skip it.
                job.emit(ErrorEvent(job.timeout_error()))
        if running:
            self._engine.abort()

    def run_call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the worker thread after the queued requests; return its value."""
        if threading.current_thread() is self._thread:
            return fn()
        call = CallJob(fn)
        self.submit(call)
        return call.wait()

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: skipped if queued, stopped within one token if running."""
        job.cancelled.set()
        with self._lock:
            running = self._current is job
        if running:
            self._engine.abort()

    def abort_current(self) -> None:
        """Cancel whatever job is running now."""
        with self._lock:
            job = self._current
        if job is not None:
            self.cancel(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if isinstance(job, CallJob):
                job.run()
                continue
            if job.finished.is_set():  # failed while waiting (deadline)
                continue
            if job.expired():  # never start a request whose caller has given up
                job.timed_out.set()
                job.emit(ErrorEvent(job.timeout_error()))
                continue
            if job.cancelled.is_set():
                job.emit(FinishEvent("abort"))
                continue
            with self._lock:
                if job.finished.is_set():  # the deadline fired between the checks
                    continue
                self._current = job
            try:
                if job.cancelled.is_set():  # cancelled between the check and taking the lock
                    job.emit(FinishEvent("abort"))
                    continue
                self._engine.run(job.request, job)
            except BaseException as exc:  # an engine bug must not kill the worker
                log.exception("engine failed")
                job.emit(ErrorEvent(exc))
            finally:
                with self._lock:
                    self._current = None
                if not job.finished.is_set():
                    job.emit(ErrorEvent(RuntimeError("the engine ended without a finish event")))

    def close(self, timeout: float = 30.0) -> None:
        """Cancel queued and running jobs, stop the thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(pending, CallJob):
                pending.error = ModelClosedError("the model was closed")
                pending.done.set()
            elif pending is not None:
                pending.cancelled.set()
                pending.emit(ErrorEvent(ModelClosedError("the model was closed")))
        self.abort_current()
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def thread_channel() -> tuple[queue.SimpleQueue[object], Deliver]:
    """A blocking channel for synchronous iteration."""
    q: queue.SimpleQueue[object] = queue.SimpleQueue()
    return q, q.put


def async_channel(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Queue[object], Deliver]:
    """An asyncio channel fed from the worker thread without blocking the loop."""
    q: asyncio.Queue[object] = asyncio.Queue()

    def deliver(event: object) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, event)
        except RuntimeError:  # the loop was closed: nobody is listening any more
            pass

    return q, deliver
