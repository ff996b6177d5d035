"""What a request returns: stream chunks, usage, and the collected result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .engine import PerfStats

ReplyFinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]
"""Why a reply ended: the engine's reasons, and ``tool_calls`` when it called tools."""


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

    def as_dict(self) -> dict[str, int]:
        """OpenAI-style usage: prompt_tokens, completion_tokens, total_tokens."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def perf_dict(perf: PerfStats) -> dict[str, Any]:
    """Timings of one request as plain values (milliseconds, tokens, tokens/s, MB)."""
    return {
        "prefill_ms": round(perf.prefill_ms, 3),
        "prefill_tokens": perf.prefill_tokens,
        "decode_ms": round(perf.decode_ms, 3),
        "decode_tokens": perf.decode_tokens,
        "decode_tokens_per_s": round(perf.decode_tokens_per_s, 3),
        "memory_mb": round(perf.memory_mb, 3),
    }


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
    """The whole reply of ``generate`` (or of a finished stream).

    ``text`` is everything the assistant said (a forced call's or JSON answer's prefill
    included); ``content`` is the answer without tool-call markup; ``tool_calls`` are the
    well-formed calls of bound tools and ``invalid_tool_calls`` the announced calls that
    could not be read (or named a tool that was not bound). ``finish_reason`` is
    ``tool_calls`` when the reply called tools.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: ReplyFinishReason
    usage: Usage
    perf: PerfStats
    model: str
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    content: str = field(default="")

    def metadata(self) -> dict[str, Any]:
        """model, finish_reason, usage (a dict) and perf (a dict): what adapters report."""
        return {
            "model": self.model,
            "finish_reason": self.finish_reason,
            "usage": self.usage.as_dict(),
            "perf": perf_dict(self.perf),
        }
