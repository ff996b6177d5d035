"""Tool calls in model output: the Qwen / Hermes ``<tool_call>{json}</tool_call>`` convention.

Also accepts a bare JSON object ``{"name": …, "arguments": …}`` answer (what small models
produce when asked for a function call without the tags) when tools were offered.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .results import InvalidToolCall, ToolCall

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _from_json(raw: str) -> ToolCall | InvalidToolCall:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return InvalidToolCall(raw=raw, error=f"tool call is not valid JSON: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return InvalidToolCall(raw=raw, error="tool call JSON needs a string 'name' field")
    args: Any = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            return InvalidToolCall(
                raw=raw, name=data["name"], error=f"arguments are not valid JSON: {exc}"
            )
    if not isinstance(args, dict):
        return InvalidToolCall(raw=raw, name=data["name"], error="arguments must be an object")
    return ToolCall(name=data["name"], arguments=args, id=str(data.get("id") or _new_id()))


def _strip_fence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[-1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()


def parse_tool_calls(
    text: str, allow_bare_json: bool = True
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split model output into (content without tool-call markup, calls, invalid calls)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    if "<tool_call>" in text:
        for match in _TAGGED.finditer(text):
            parsed = _from_json(match.group(1))
            (calls if isinstance(parsed, ToolCall) else invalid).append(parsed)  # type: ignore[arg-type]
        content = _TAGGED.sub("", text).strip()
        return content, calls, invalid
    if allow_bare_json:
        candidate = _strip_fence(text)
        if candidate.startswith("{") and '"name"' in candidate:
            parsed = _from_json(candidate)
            if isinstance(parsed, ToolCall):
                return "", [parsed], []
            return "", [], [parsed]
    return text, calls, invalid
