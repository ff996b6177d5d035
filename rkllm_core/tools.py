"""Tool calls in model output: the Qwen / Hermes ``<tool_call>{json}</tool_call>`` convention.

Also accepts untagged JSON calls ``{"name": …, "arguments": …}`` (what small models write when
asked for a function call without the tags), but only when the whole answer is made of such
calls: an answer that mixes a call with other text or other JSON (Qwen2.5 answering a tool
result with ``{"name": "multiply", …}\\n{"response": "888"}``) is content, never dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from .results import InvalidToolCall, ToolCall

TOOL_CALL_TAG = "<tool_call>"
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_DECODER = json.JSONDecoder()


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call_of(data: Any, raw: str, tools: Sequence[str] | None) -> ToolCall | InvalidToolCall:
    """A decoded JSON value as a call, or why it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return InvalidToolCall(raw=raw, error="tool call JSON needs a string 'name' field")
    name = data["name"]
    args: Any = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            return InvalidToolCall(raw=raw, name=name, error=f"arguments are not valid JSON: {exc}")
    if not isinstance(args, dict):
        return InvalidToolCall(raw=raw, name=name, error="arguments must be an object")
    if tools is not None and name not in tools:
        return InvalidToolCall(
            raw=raw, name=name, error=f"{name!r} is not one of the bound tools {list(tools)}"
        )
    return ToolCall(name=name, arguments=args, id=str(data.get("id") or _new_id()))


def _from_json(raw: str, tools: Sequence[str] | None) -> ToolCall | InvalidToolCall:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return InvalidToolCall(raw=raw, error=f"tool call is not valid JSON: {exc}")
    return _call_of(data, raw, tools)


def _strip_fence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[-1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()


def _bare_calls(text: str, tools: Sequence[str] | None) -> list[ToolCall] | None:
    """The calls when ``text`` is nothing but untagged JSON calls (one or several), else None."""
    candidate = _strip_fence(text)
    if not candidate.startswith("{"):
        return None
    calls: list[ToolCall] = []
    pos = 0
    while pos < len(candidate):
        try:
            data, end = _DECODER.raw_decode(candidate, pos)
        except json.JSONDecodeError:
            return None
        parsed = _call_of(data, candidate[pos:end], tools)
        if not isinstance(parsed, ToolCall):
            return None
        calls.append(parsed)
        pos = end
        while pos < len(candidate) and candidate[pos] in " \t\r\n,;":
            pos += 1
    return calls or None


def parse_tool_calls(
    text: str, allow_bare_json: bool = True, tools: Sequence[str] | None = None
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split model output into (content without tool-call markup, calls, invalid calls).

    Tagged calls (``<tool_call>…</tool_call>``) that cannot be read, or that name a tool not in
    ``tools`` (when given), are invalid calls. Untagged JSON is read as calls only when the
    whole text is well-formed calls of bound tools; anything else stays content.
    """
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    if TOOL_CALL_TAG in text:
        for match in _TAGGED.finditer(text):
            parsed = _from_json(match.group(1), tools)
            if isinstance(parsed, ToolCall):
                calls.append(parsed)
            else:
                invalid.append(parsed)
        content = _TAGGED.sub("", text).strip()
        return content, calls, invalid
    if allow_bare_json:
        bare = _bare_calls(text, tools)
        if bare:
            return "", bare, []
    return text, calls, invalid
