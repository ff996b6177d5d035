"""The runtime handle's lifetime: one task at a time, destroyed exactly once, never under a task.

:class:`Handle` owns the ``LLMHandle``. It is destroyed by ``close()``, by garbage collection
(a ``weakref.finalize`` in the engine) or at interpreter exit, and never while a task runs
(destroying under a running task crashes the process; leaking is the lesser evil).

One handle runs one task at a time, and in async mode (``rkllm_run_async``) the runtime's task
outlives the FINISH callback that ends our run: the callback fires from inside the task, which
still has to unwind. :meth:`Handle.wait_runtime_idle` therefore waits, before the next task,
until ``rkllm_is_running`` says the runtime is idle. Its return value means "running" in some
releases' headers and "idle" in others', so the value seen right after ``rkllm_init`` (when no
task can run) is taken as the idle value. Without the function, or if it never reports idle,
the wait is bounded and the next call retries a refused start for as long.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from .library import RuntimeLibrary

log = logging.getLogger(__name__)

# How long close() waits for a running task to end before destroying the handle.
CLOSE_WAIT_S = 5.0
# How long the next task waits for the runtime to report the previous one ended.
IDLE_WAIT_S = 2.0


class Handle:
    """Owns the runtime handle: destroyed exactly once (close, garbage collection or exit)."""

    def __init__(self, runtime: RuntimeLibrary) -> None:
        self.runtime = runtime
        self.lib: Any = runtime.lib
        self.ptr: Any = None
        self.lock = threading.Lock()
        self.destroyed = False
        self.idle = threading.Event()  # our own view: no run of ours is in progress
        self.idle.set()
        self.keepalive: list[Any] = []
        self.has_is_running = "rkllm_is_running" in runtime.identity.symbols
        self.idle_value: int | None = None
        self.last_end = 0.0  # when the last async task's run ended, monotonic

    def attach(self, ptr: Any) -> None:
        """Take the handle ``rkllm_init`` returned; learn the runtime's idle answer."""
        self.ptr = ptr
        if self.has_is_running:
            self.idle_value = int(self.lib.rkllm_is_running(ptr))

    def runtime_busy(self) -> bool | None:
        """What ``rkllm_is_running`` says (None: not available)."""
        if self.idle_value is None or self.ptr is None or self.destroyed:
            return None
        return int(self.lib.rkllm_is_running(self.ptr)) != self.idle_value

    def wait_runtime_idle(self, limit: float = IDLE_WAIT_S) -> bool:
        """Wait until the runtime's last task has ended (bounded); True if it said so."""
        if self.runtime_busy() is None:
            return False
        deadline = time.monotonic() + limit
        pause = 0.0005
        while self.runtime_busy():
            if time.monotonic() > deadline:
                log.warning("the RKLLM runtime still reports a running task %.1f s after it"
                            " finished; starting the next one anyway", limit)
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        return True

    def abort(self) -> None:
        ptr = self.ptr
        if ptr is not None and not self.destroyed:
            rc = self.lib.rkllm_abort(ptr)
            if rc != 0:
                log.warning("rkllm_abort returned %d", rc)

    def destroy(self) -> None:
        with self.lock:
            if self.destroyed or self.ptr is None:
                self.destroyed = True
                return
            self.destroyed = True
            ptr = self.ptr
        if not self.idle.is_set():
            self.lib.rkllm_abort(ptr)
            if not self.idle.wait(CLOSE_WAIT_S):
                log.warning("a run did not end within %.0f s; the NPU handle is not destroyed",
                            CLOSE_WAIT_S)
                return
        rc = self.lib.rkllm_destroy(ptr)
        self.ptr = None
        if rc != 0:
            log.warning("rkllm_destroy returned %d", rc)


LIVE_HANDLES: weakref.WeakSet[Handle] = weakref.WeakSet()


def _abort_all_at_exit() -> None:
    # Runs before the interpreter joins non-daemon threads: a worker blocked in rkllm_run
    # (e.g. after Ctrl-C in the main thread) would otherwise keep the process alive.
    for handle in list(LIVE_HANDLES):
        if not handle.idle.is_set():
            handle.abort()


try:  # private but stable since 3.9; concurrent.futures relies on it
    threading._register_atexit(_abort_all_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover
    import atexit

    atexit.register(_abort_all_at_exit)
