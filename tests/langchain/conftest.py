"""Fixtures for the LangChain tests: the SmolLM2 demo model, loaded once per session."""

from __future__ import annotations

import os
from typing import Any

import pytest

from rkllm_core import RKLLMModel, shared_model

DEMO_MODEL = os.environ.get("RKLLM_TEST_MODEL", "smollm2")


@pytest.fixture(scope="session")
def demo_model() -> RKLLMModel:
    """The shared demo model: every ChatRKLLM/RKLLM/RKLLMEmbeddings on it reuses this load."""
    return shared_model(DEMO_MODEL)


class ScriptedStream:
    """Stands in for a core TokenStream: yields scripted pieces, then a real result object."""

    def __init__(self, pieces: list[str], parse_tools: bool) -> None:
        from rkllm_core import StreamChunk

        self._chunks = [StreamChunk(p, i) for i, p in enumerate(pieces)]
        self._pieces = pieces
        self._parse = parse_tools
        self.aborted = False

    def __iter__(self) -> Any:
        for chunk in self._chunks:
            if self.aborted:
                return
            yield chunk

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass

    @property
    def result(self) -> Any:
        from rkllm_core import GenerationResult, PerfStats, Usage, parse_tool_calls

        text = "".join(self._pieces)
        content, calls, invalid = (text, [], [])
        if self._parse:
            content, calls, invalid = parse_tool_calls(text)
        return GenerationResult(
            text=text, token_ids=tuple(range(len(self._pieces))),
            finish_reason="abort" if self.aborted else "stop",
            usage=Usage(5, len(self._pieces)), perf=PerfStats(), model="scripted",
            tool_calls=tuple(calls), invalid_tool_calls=tuple(invalid), content=content,
        )


class ScriptedModel:
    """A stand-in RKLLMModel whose answers are scripted token pieces.

    Used to test how ChatRKLLM turns model output (tool-call markup, malformed JSON) into
    LangChain messages, without depending on what a 135M model happens to write.
    """

    closed = False

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.prompts: list[Any] = []

    def render_chat(self, messages: Any, tools: Any = None, **_: Any) -> str:
        import json

        return json.dumps({"messages": messages, "tools": tools or []}) + "\nASSISTANT:"

    def stream(self, prompt: Any, tools: Any = None, **sampling: Any) -> ScriptedStream:
        self.prompts.append(prompt)
        return ScriptedStream(self.pieces, parse_tools=bool(tools))
