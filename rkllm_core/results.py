"""What a request returns: stream chunks, usage, and the collected result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .engine import FinishReason, PerfStats


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """A piece of streamed text (whole UTF-8 characters) and the token that completed it."""

    text: str
    token_id: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """prompt + completion."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call parsed from the model's output (``arguments`` already decoded)."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True, slots=True)
class InvalidToolCall:
    """A tool call the model announced but that could not be parsed."""

    raw: str
    error: str
    name: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The whole output of ``generate`` (or of a finished stream)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    perf: PerfStats
    model: str
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    content: str = field(default="")  # text without the tool-call markup
