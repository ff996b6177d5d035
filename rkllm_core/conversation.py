"""The conversation a model keeps in its KV cache between calls (``keep_history=True``).

It remembers the messages so far and the exact text the cache holds, so a new turn sends only
what is new. Whenever the cache may hold something the text does not show (a stop string, an
abort), the cached text is forgotten and the next turn re-sends the whole conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .reply import Reply


@dataclass
class Turn:
    """Bookkeeping of one generate call (for multi-turn history)."""

    prompt_text: str | None
    """The whole prompt as rendered (prefill included), when it was rendered here."""
    messages: list[dict] | None
    keep_history: bool
    role: str | None = None
    """The runtime's input role, when the runtime renders the turn itself."""


class Conversation:
    """Messages and cached prompt text of one model's multi-turn conversation."""

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.cached_text: str | None = None

    def reset(self) -> None:
        """Forget the conversation."""
        self.history, self.cached_text = [], None

    def prepare(
        self,
        messages: list[dict],
        render: Callable[[list[dict]], str],
        cache_tokens: Callable[[], int],
        clear_cache: Callable[[], None],
        prefill: str = "",
    ) -> tuple[str, Turn]:
        """The text to send for ``messages``: only the new part when the cache holds the rest."""
        history = self.history
        new = messages[len(history):] if messages[: len(history)] == history else messages
        conversation = history + new
        full = render(conversation) + prefill
        cached = self.cached_text
        if cached and full.startswith(cached) and cache_tokens() > 0:
            text = full[len(cached):]
        else:
            if cache_tokens() > 0:
                clear_cache()
            text = full
        return text, Turn(full, conversation, True)

    def record(
        self,
        turn: Turn,
        reply: Reply,
        generated: str,
        reason: str,
        stopped_by_string: bool,
        eos_token: str,
    ) -> None:
        """Remember the finished turn (the assistant's answer and what the cache now holds)."""
        if not (turn.keep_history and turn.messages is not None and turn.prompt_text is not None):
            return
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            assistant["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
            ]
        self.history = [*turn.messages, assistant]
        if stopped_by_string or reason == "abort":
            # the cache holds tokens the text does not show: re-send the whole
            # conversation next turn rather than guess what the cache holds
            self.cached_text = None
        else:
            eos = eos_token if reason == "stop" else ""
            self.cached_text = turn.prompt_text + generated + eos

    def failed(self, turn: Turn) -> None:
        """A turn failed: the cache state is unknown, start over."""
        if turn.keep_history:
            self.reset()
