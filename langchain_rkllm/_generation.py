"""One chat request: how it is prompted, and how streamed text becomes LangChain output.

Shared by the sync and async paths of :class:`ChatRKLLM` so the two never diverge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from rkllm_core import GenerationResult, InvalidToolCall, RKLLMModel, ToolCall, parse_tool_calls

from ._tools import (
    JsonObjectEnd,
    MarkupHoldback,
    forced_call_prefill,
    normalize_tool_choice,
    object_start,
)

Mode = Literal["plain", "tools", "forced", "json"]

_SCHEMA_INSTRUCTION = (
    "Answer with a single JSON object that conforms to this JSON schema, and nothing else:\n"
    "{schema}"
)


@dataclass
class Plan:
    """What is sent to the model for one call, and how its output is read."""

    prompt: str | list[dict[str, Any]]
    mode: Mode = "plain"
    tools: list[dict[str, Any]] | None = None
    prefill: str = ""
    forced_name: str | None = None
    """The tool the prefill already named (tool_choice naming one tool)."""


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def make_plan(
    model: RKLLMModel,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: Any,
    response_format: dict[str, Any] | None,
) -> Plan:
    """Decide the prompt for a call.

    Forced tool calls and JSON answers are prompted by writing the start of the answer
    ourselves (the chat template's generation prompt, then ``<tool_call>{"name": …`` or
    ``{"``): the model continues from there, which keeps small models on format.
    """
    if response_format is not None:
        kind = response_format.get("type")
        # '{"' is one token in BPE vocabularies (Qwen2, Llama/SmolLM); a bare '{' would
        # leave the model mid-token and it tends to write unquoted keys.
        prefill = '{"'
        if kind == "json_schema":
            schema = response_format.get("schema") or (
                response_format.get("json_schema") or {}
            ).get("schema")
            if not isinstance(schema, dict):
                raise ValueError("response_format json_schema needs a 'schema' dict")
            messages = _with_system_text(
                messages, _SCHEMA_INSTRUCTION.format(schema=json.dumps(schema, ensure_ascii=False))
            )
            prefill = object_start(schema) or prefill
        elif kind != "json_object":
            raise ValueError(
                f"response_format type {kind!r} is not supported; use 'json_object' or"
                " 'json_schema'"
            )
        return Plan(model.render_chat(messages) + prefill, mode="json", prefill=prefill)
    if tools:
        choice = normalize_tool_choice(tool_choice, tools)
        if choice == "none":
            return Plan(messages)
        if choice is None:
            return Plan(messages, mode="tools", tools=tools)
        prefill = forced_call_prefill(choice, tools)
        return Plan(
            model.render_chat(messages, tools=tools) + prefill,
            mode="forced",
            tools=tools,
            prefill=prefill,
            forced_name=None if choice == "any" else choice,
        )
    return Plan(messages)


@dataclass
class Outcome:
    """The finished answer, in the terms LangChain needs."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    finish_reason: str = "stop"


class Assembler:
    """Turns streamed text into the content to show now and, at the end, the outcome."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._holdback = MarkupHoldback() if plan.mode == "tools" else None
        self._scanner: JsonObjectEnd | None = None
        self._kept: list[str] = []
        self.complete = False  # the forced call / JSON object has closed: stop generating
        self._released: list[str] = []
        if plan.mode in ("forced", "json"):
            self._scanner = JsonObjectEnd()
            # A prefill can be the whole answer (a call of a tool without parameters).
            self.complete = self._scanner.feed(plan.prefill) >= 0

    def push(self, text: str) -> str:
        """Add streamed text; return the content that may be streamed to the caller now."""
        shown = self._route(text)
        if shown:
            self._released.append(shown)
        return shown

    def _route(self, text: str) -> str:
        if self.plan.mode == "plain":
            return text
        if self._holdback is not None:
            return self._holdback.push(text)
        assert self._scanner is not None
        if self.complete:
            return ""
        end = self._scanner.feed(text)
        if end >= 0:
            self._kept.append(text[:end])
            self.complete = True
        else:
            self._kept.append(text)
        return ""

    @property
    def streamed(self) -> str:
        """Content already released to the caller."""
        return "".join(self._released)

    def finish(self, result: GenerationResult) -> Outcome:
        """The outcome, from the collected result (and what this assembler kept)."""
        reason: str = result.finish_reason
        if self.complete and reason == "abort":
            reason = "stop"  # we stopped it ourselves once the answer was whole
        if self.plan.mode == "plain":
            return Outcome(result.text, finish_reason=reason)
        if self.plan.mode == "json":
            return Outcome(self.plan.prefill + "".join(self._kept), finish_reason=reason)
        if self.plan.mode == "forced":
            content, calls, invalid = parse_tool_calls(
                self.plan.prefill + "".join(self._kept), allow_bare_json=False
            )
            if self.plan.forced_name:
                # We wrote the name ourselves: keep it even when the arguments are broken,
                # so the caller sees which tool the bad call was meant for.
                invalid = [replace(c, name=c.name or self.plan.forced_name) for c in invalid]
        else:
            content, calls, invalid = (
                result.content,
                list(result.tool_calls),
                list(result.invalid_tool_calls),
            )
        if calls:
            reason = "tool_calls"
        return Outcome(content, calls, invalid, reason)
