"""The C callback's Python side: one :class:`Run` per task, events to the sink, stops.

The callback never raises into C: an exception is kept on the run and reported after it.
WAITING states are joined so text never breaks inside a UTF-8 character; hidden states and
logits are copied before the callback returns (the runtime frees them after).
"""

from __future__ import annotations

import codecs
import threading
import time
from typing import Any

import numpy as np

from ..engine import (
    HiddenStateEvent,
    InferMode,
    LogitsEvent,
    PerfStats,
    Sink,
    TokenEvent,
)
from .handle import Handle
from .library import RuntimeLibrary

NORMAL, WAITING, FINISH, ERROR, HIDDEN_11 = 0, 1, 2, 3, 4  # LLMCallState
CONTINUE, PAUSE, RELEASE = 0, 1, 2  # what a 1.2.1+ callback returns


class Run:
    """State of one rkllm_run, shared by the caller's thread and the callback's thread."""

    __slots__ = (
        "abort_thread",
        "completion",
        "decoder",
        "done",
        "error",
        "finished",
        "id",
        "keep",
        "limit",
        "mode",
        "payloads",
        "pending",
        "perf",
        "runtime_error",
        "sink",
        "stop_kind",
        "stop_time",
    )

    def __init__(self, run_id: int, sink: Sink, mode: InferMode, limit: int | None) -> None:
        self.id = run_id
        self.sink = sink
        self.mode = mode
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = b""
        self.stop_kind: str | None = None  # "sink" | "abort" | "limit" | "error"
        self.error: BaseException | None = None
        self.runtime_error = False
        self.finished = False
        self.done = threading.Event()
        self.perf: PerfStats | None = None
        self.completion = 0
        self.limit = limit
        self.payloads = 0
        self.keep: list[Any] = []
        self.abort_thread: threading.Thread | None = None
        self.stop_time = 0.0


class Dispatcher:
    """The C callback's Python side. It holds no reference to the engine, so an engine that is
    dropped without close() can still be collected (and its handle destroyed by a finalizer)."""

    def __init__(self, runtime: RuntimeLibrary, handle: Handle) -> None:
        self.ffi = runtime.ffi
        self.spec = runtime.spec
        self.handle = handle
        self.current: Run | None = None
        self.returns_int = runtime.spec.callback_returns_int
        self.release_after_copy = runtime.spec.sampling_per_run  # 1.3 understands return 2

    def request_stop(self, run: Run, kind: str) -> None:
        if run.stop_kind is None:
            run.stop_kind = kind
            run.stop_time = time.monotonic()
        if self.returns_int:
            run.done.set()  # the caller returns 1 (pause) now: the task calls back no more
        elif run.abort_thread is None:
            # Families 1.1/1.2.0 cannot pause through the return value: abort from a helper
            # thread, because calling rkllm_abort inside its own callback may deadlock.
            t = threading.Thread(target=self._abort_if_current, args=(run,), daemon=True)
            run.abort_thread = t
            t.start()

    def _abort_if_current(self, run: Run) -> None:
        if self.current is run and not run.done.is_set():
            self.handle.abort()

    def on_result(self, result: Any, userdata: Any, state: int) -> int:
        ffi = self.ffi
        run = self.current
        if run is None or int(ffi.cast("intptr_t", userdata)) != run.id:
            return PAUSE  # a late callback of a run that already ended
        try:
            return self._handle(run, result, state)
        except BaseException as exc:
            if run.error is None:
                run.error = exc
            self.request_stop(run, "error")
            return PAUSE

    def _handle(self, run: Run, result: Any, state: int) -> int:
        ffi = self.ffi
        if state == FINISH:
            if self.spec.perf and result != ffi.NULL:
                p = result.perf
                run.perf = PerfStats(
                    float(p.prefill_time_ms), int(p.prefill_tokens), float(p.generate_time_ms),
                    int(p.generate_tokens), float(p.memory_usage_mb),
                )
            run.finished = True
            run.done.set()
            return CONTINUE
        if state == ERROR:
            run.runtime_error = True
            run.done.set()
            return CONTINUE
        if run.stop_kind is not None:
            if self.returns_int:
                run.done.set()  # a paused task calls back no more
            return PAUSE
        if result == ffi.NULL:
            return CONTINUE
        if run.mode != InferMode.GENERATE:
            return self._payload(run, result, state)
        if state != NORMAL and state != WAITING:
            return CONTINUE
        text_ptr = result.text
        raw = ffi.string(text_ptr) if text_ptr != ffi.NULL else b""
        if state == WAITING:
            # The bytes end inside a UTF-8 character. Runtimes either re-send them with the
            # next token or send only the rest; a continuation byte can never start the rest,
            # so "the next text starts with the pending bytes" tells which one happened.
            pending = run.pending
            run.pending = raw if pending and raw.startswith(pending) else pending + raw
            text = ""
        else:
            pending = run.pending
            if pending:
                raw = raw if raw.startswith(pending) else pending + raw
                run.pending = b""
            text = run.decoder.decode(raw)
        run.completion += 1
        if not run.sink.emit(TokenEvent(text, int(result.token_id))):
            self.request_stop(run, "sink")
            return PAUSE
        if run.limit is not None and run.completion >= run.limit:
            self.request_stop(run, "limit")
            return PAUSE
        return CONTINUE

    def _payload(self, run: Run, result: Any, state: int) -> int:
        ffi = self.ffi
        arr: np.ndarray | None = None
        if run.mode == InferMode.LAST_HIDDEN_LAYER:
            if state not in (NORMAL, HIDDEN_11):
                return CONTINUE
            lh = result.last_hidden_layer
            n, d = int(lh.num_tokens), int(lh.embd_size)
            if lh.hidden_states != ffi.NULL and n > 0 and d > 0:
                # Copy now: the runtime frees this buffer when the callback returns.
                arr = np.frombuffer(ffi.buffer(lh.hidden_states, 4 * n * d), np.float32)
                event: Any = HiddenStateEvent(arr.reshape(n, d).copy())
        elif run.mode == InferMode.LOGITS and self.spec.logits and state == NORMAL:
            lg = result.logits
            n, v = int(lg.num_tokens), int(lg.vocab_size)
            if lg.logits != ffi.NULL and n > 0 and v > 0:
                arr = np.frombuffer(ffi.buffer(lg.logits, 4 * n * v), np.float32)
                event = LogitsEvent(arr.reshape(n, v).copy())
        if arr is None:
            return CONTINUE
        run.payloads += 1
        if not run.sink.emit(event):
            self.request_stop(run, "sink")
            return PAUSE
        return RELEASE if self.release_after_copy else CONTINUE
