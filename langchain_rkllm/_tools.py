"""LangChain tools / pydantic models / functions → the OpenAI tool dicts the core takes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_tool


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools / pydantic models / functions / dicts → OpenAI tool dicts."""
    return [convert_to_openai_tool(t) for t in tools]
