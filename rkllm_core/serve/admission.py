"""The bounded request queue: admit, count, refuse with a useful Retry-After.

The model runs one request at a time and its own queue is unbounded; admission here is what
keeps memory bounded under load. A request holds its slot from admission until its answer is
complete (or it was aborted), so ``waiting`` is the number of requests behind the running one.
"""

from __future__ import annotations

import math
import threading
import time

from .errors import APIError


class Admission:
    """Counts admitted requests; refuses past ``1 + max_queue`` with 429."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._admitted = 0
        self._service_s = 1.0  # running mean of a request's time holding the model
        self.draining = False
        self.refused = 0

    @property
    def admitted(self) -> int:
        """Requests running or waiting."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Requests queued behind the running one."""
        return max(0, self._admitted - 1)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead times the mean service time."""
        return max(1, math.ceil(self._service_s * max(1, self.waiting)))

    def acquire(self) -> Ticket:
        """Admit a request or raise 429 (queue full) / 503 (shutting down)."""
        with self._lock:
            if self.draining:
                raise APIError(
                    503, "the server is shutting down; retry on another server",
                    type="server_error", code="shutting_down", headers={"Retry-After": "1"},
                )
            if self._admitted >= 1 + self.max_queue:
                self.refused += 1
                raise APIError(
                    429,
                    f"the model's queue is full ({self.max_queue} waiting behind the running"
                    f" request); retry after the Retry-After delay or on another server",
                    type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": str(self.retry_after())},
                )
            self._admitted += 1
        return Ticket(self)

    def _release(self, seconds: float) -> None:
        with self._lock:
            self._admitted -= 1
            # a slow exponential mean: one odd request does not swing the estimate
            self._service_s = 0.8 * self._service_s + 0.2 * seconds


class Ticket:
    """One admitted request's slot; :meth:`release` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._start = time.monotonic()
        self._released = False

    def release(self) -> None:
        """Give the slot back."""
        if not self._released:
            self._released = True
            self._admission._release(time.monotonic() - self._start)
