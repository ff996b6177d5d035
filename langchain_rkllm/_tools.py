"""Tool schemas, tool_choice, and the text scanners used while streaming tool calls / JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.utils.function_calling import convert_to_openai_tool

TOOL_CALL_TAG = "<tool_call>"


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools / pydantic models / functions / dicts → OpenAI tool dicts."""
    return [convert_to_openai_tool(t) for t in tools]


def tool_names(tools: Sequence[dict[str, Any]]) -> list[str]:
    """Function names of OpenAI tool dicts."""
    return [t["function"]["name"] for t in tools]


def normalize_tool_choice(tool_choice: Any, tools: Sequence[dict[str, Any]]) -> str | None:
    """Resolve LangChain's tool_choice spellings.

    Returns None (the model decides), ``"none"``, ``"any"`` (some tool must be called) or a
    tool name (that tool must be called).
    """
    names = tool_names(tools)
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return None
    if tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required") or tool_choice is True:
        return names[0] if len(names) == 1 else "any"
    name: Any = tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(name, str) and name in names:
        return name
    raise ValueError(
        f"tool_choice {tool_choice!r} does not name a bound tool; bound tools: {names}. Use"
        " 'auto', 'none', 'any'/'required', True, a tool name or"
        " {'type': 'function', 'function': {'name': …}}"
    )


def object_start(schema: Any) -> str | None:
    """The opening of a JSON object that every valid instance of ``schema`` can start with.

    Small models shown a JSON schema often answer with the schema itself (``{"title":
    "Joke", "properties": …}``). Writing the first required key ourselves (key order is
    free in JSON, so no valid answer is excluded) puts them on the instance. An object
    schema with no properties at all is answered outright with ``{}``. Returns None when
    nothing can be fixed in advance. The text ends after ``":``, a token boundary.
    """
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties")
    if properties == {} and not schema.get("additionalProperties"):
        return "{}"
    required = schema.get("required") or []
    for key in properties or {}:
        if key in required:
            return "{" + json.dumps(key, ensure_ascii=False) + ":"
    return None


def forced_call_prefill(choice: str, tools: Sequence[dict[str, Any]] = ()) -> str:
    """Assistant text that starts a tool call, so even a small model answers with one.

    Writing the opening of the ``<tool_call>`` JSON ourselves (the model continues from it)
    replaces what API providers do with constrained decoding for ``tool_choice``.

    The prefill must end where the tokenizer would cut the natural text: BPE tokenizers
    write ``": {"`` as ``'":'`` + ``' {"'``, so a prefill ending in ``' {'`` leaves the
    model mid-token, and it continues with unquoted keys (``{input: 3}``, seen on
    Qwen2.5). It ends after ``"arguments":``, after the first required argument's
    ``"key":`` (see :func:`object_start`), or after the opening ``' "'`` of the name.
    """
    if choice == "any":
        return f'{TOOL_CALL_TAG}\n{{"name": "'
    prefill = f'{TOOL_CALL_TAG}\n{{"name": {json.dumps(choice)}, "arguments":'
    parameters = next(
        (t["function"].get("parameters") for t in tools if t["function"]["name"] == choice), None
    )
    start = object_start(parameters)
    if start == "{}":
        return prefill + " {}}"  # nothing to fill in: the call is already whole
    return prefill + (" " + start if start else "")


class JsonObjectEnd:
    """Finds where the first top-level JSON object in a text stream closes.

    Used to stop generation as soon as a forced tool call or JSON answer is complete (small
    models keep talking after it).
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._seen = 0
        self.closed = False

    def feed(self, text: str) -> int:
        """Scan ``text``; return the index just past the closing brace, or -1."""
        if self.closed:
            return 0
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                continue
            if self._depth == 0 and ch != "{":
                continue  # text before the object (e.g. the <tool_call> tag)
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.closed = True
                    return i + 1
        return -1


class MarkupHoldback:
    """Lets plain content stream while holding back anything that may be a tool call.

    Content is released until ``<tool_call>`` (or a bare JSON / fenced answer at the very
    start) appears; from there everything is held for the tool-call parser at the end.
    """

    def __init__(self) -> None:
        self._pending = ""
        self.released = ""
        self.holding = False

    def push(self, text: str) -> str:
        """Add streamed text; return what can be shown as content now."""
        if self.holding:
            return ""
        buffer = self._pending + text
        if not self.released and buffer.lstrip()[:1] in ("{", "`"):
            self.holding = True  # maybe a bare JSON tool call
            return ""
        cut = buffer.find(TOOL_CALL_TAG)
        if cut >= 0:
            self.holding = True
            return self._release(buffer[:cut].rstrip())
        keep = 0
        for n in range(min(len(TOOL_CALL_TAG) - 1, len(buffer)), 0, -1):
            if buffer.endswith(TOOL_CALL_TAG[:n]):
                keep = n
                break
        shown = buffer[: len(buffer) - keep]
        # Whitespace is held until text follows: before a tool call it is not content.
        shown_stripped = shown.rstrip()
        if not self.released:
            shown_stripped = shown_stripped.lstrip() and shown_stripped
        self._pending = buffer[len(shown_stripped) :]
        return self._release(shown_stripped)

    def _release(self, text: str) -> str:
        self.released += text
        return text
