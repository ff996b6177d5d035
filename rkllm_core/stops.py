"""Stop strings over a token stream, including strings that span token boundaries."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Releases streamed text only once it cannot be the start of a stop string.

    ``push`` returns the text that is safe to show and whether a stop string was found; the
    stop string itself and anything after it are never released.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def push(self, text: str) -> tuple[str, bool]:
        """Add streamed text; return (text safe to release, stop found)."""
        if self.stopped:
            return "", True
        if not self._stops:
            return text, False
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buffer[:cut], True
        keep = self._holdback(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Text still held back when the stream ended without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
