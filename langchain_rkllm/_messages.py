"""LangChain messages ↔ the core's OpenAI-style message dicts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call

from rkllm_core import GenerationResult, InvalidToolCall, ToolCall

_CHAT_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
               "ai": "assistant", "tool": "tool"}


def _text(content: str | list[Any], *, strict: bool, role: str) -> str:
    """Message content as plain text.

    User and system content that is not text (images, audio …) is an error: the model reads
    text only, and silently dropping a picture would change the question. Assistant content
    blocks such as ``tool_use`` are redundant with ``tool_calls`` and are skipped.
    """
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("json", "non_standard"):
            parts.append(json.dumps(block.get("json", block.get("value")), ensure_ascii=False))
        elif strict:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(
                f"a {role} message has a {kind!r} content block; RKLLM models take text only"
            )
    return "".join(parts)


def to_core_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert LangChain messages to the dicts ``RKLLMModel`` renders with the chat template."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": _text(message.content, strict=True,
                                                           role="system")})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _text(message.content, strict=True,
                                                         role="user")})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {
                "role": "assistant",
                "content": _text(message.content, strict=False, role="assistant"),
            }
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": c.get("id") or "", "name": c["name"], "arguments": c["args"]}
                    for c in message.tool_calls
                ]
            out.append(entry)
        elif isinstance(message, ToolMessage):
            out.append({
                "role": "tool",
                "content": _text(message.content, strict=False, role="tool"),
                "tool_call_id": message.tool_call_id,
            })
        elif isinstance(message, FunctionMessage):
            out.append({"role": "tool", "content": _text(message.content, strict=False,
                                                          role="tool")})
        elif isinstance(message, ChatMessage):
            role = _CHAT_ROLES.get(message.role.lower())
            if role is None:
                raise ValueError(
                    f"ChatMessage role {message.role!r} is not supported; use one of"
                    f" {sorted(_CHAT_ROLES)}"
                )
            out.append({"role": role, "content": _text(message.content, strict=True,
                                                       role=role)})
        else:
            raise ValueError(f"unsupported message type {type(message).__name__}")
    return out


def lc_tool_calls(calls: Sequence[ToolCall]) -> list[Any]:
    """Core tool calls → LangChain ``ToolCall`` dicts."""
    return [tool_call(name=c.name, args=dict(c.arguments), id=c.id) for c in calls]


def lc_invalid_tool_calls(calls: Sequence[InvalidToolCall]) -> list[Any]:
    """Core invalid tool calls → LangChain ``InvalidToolCall`` dicts (raw text kept)."""
    return [
        invalid_tool_call(name=c.name, args=c.raw, id=c.id or None, error=c.error) for c in calls
    ]


def response_metadata(result: GenerationResult, name: str) -> dict[str, Any]:
    """LangChain response metadata of a core result (the core's one metadata mapping, flat)."""
    meta = result.metadata()
    return {
        "model_name": name,
        "model": meta["model"],
        "model_provider": "rkllm",
        "finish_reason": meta["finish_reason"],
        **meta["perf"],
    }
