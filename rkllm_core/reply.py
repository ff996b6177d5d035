"""The reply: how a request is prompted and how the model's streamed text becomes an answer.

Decided here once, for every caller (the Python API, LangChain, LlamaIndex, the server):

- ``tool_choice`` spellings and what they force (:func:`normalize_tool_choice`);
- forced tool calls and JSON answers, prompted by writing the start of the answer ourselves
  (a *prefill*: ``<tool_call>{"name": …`` or ``{"key":``), which keeps small models on format
  where API providers would use constrained decoding;
- holding back tool-call markup while content streams (:class:`MarkupHoldback`);
- stopping as soon as a forced call / JSON object is whole (:class:`JsonObjectEnd`);
- assembling content, tool calls and invalid tool calls (:class:`ReplyAssembler`).

The per-call deadline lives with the queue (:mod:`rkllm_core.queueing`): it counts queue time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .errors import ConfigError
from .results import InvalidToolCall, ReplyFinishReason, ToolCall
from .tools import TOOL_CALL_TAG, parse_tool_calls

ReplyMode = Literal["plain", "tools", "forced", "json"]

SCHEMA_INSTRUCTION = (
    "Answer with a single JSON object that conforms to this JSON schema, and nothing else:\n"
    "{schema}"
)

# Keys that also are JSON-schema keywords: an answer that starts with one of them reads like
# the schema itself, and small models then go on writing the schema (seen on Qwen2.5 with a
# "title" key, 2 of 2 tries).
_SCHEMA_WORDS = frozenset(
    {"title", "type", "properties", "required", "description", "items", "$schema", "$defs",
     "definitions", "enum", "default", "additionalProperties", "anyOf", "allOf", "oneOf"}
)


# --- tools and tool_choice ----------------------------------------------------------------


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    """Function names of OpenAI-style tool dicts (``{"type": "function", "function": …}``)."""
    names = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"tool {index} is not an OpenAI-style tool: expected"
                " {'type': 'function', 'function': {'name': …, 'parameters': {…}}}"
            )
        names.append(name)
    return names


def normalize_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | None:
    """Resolve the spellings of ``tool_choice`` (OpenAI, LangChain, LlamaIndex).

    Returns None (the model decides: ``None``, ``'auto'``, ``False``), ``'none'`` (no tools),
    ``'any'`` (some tool must be called: ``'any'``, ``'required'``, ``True``) or a tool name
    (that tool must be called: the name, ``{'type': 'function', 'function': {'name': …}}`` or
    ``{'name': …}``). ``'any'`` with one tool is that tool. A name that is not among
    ``tools`` is a :class:`~rkllm_core.ConfigError`.
    """
    names = tool_names(tools)
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return None
    if tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required") or tool_choice is True:
        if not names:
            raise ConfigError(f"tool_choice={tool_choice!r} needs at least one tool")
        return names[0] if len(names) == 1 else "any"
    name: Any = tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = (function.get("name") if isinstance(function, Mapping) else None) or (
            tool_choice.get("name")
        )
        if name is None and tool_choice.get("type") in ("auto", "none", "any", "required"):
            return normalize_tool_choice(tool_choice["type"], tools)
    if isinstance(name, str) and name in names:
        return name
    raise ConfigError(
        f"tool_choice {tool_choice!r} does not name a bound tool; bound tools: {names}. Use"
        " 'auto', 'none', 'any'/'required', True, a tool name or"
        " {'type': 'function', 'function': {'name': …}}"
    )


def object_start(schema: Any) -> str | None:
    """The opening of a JSON object that every valid instance of ``schema`` can start with.

    Small models shown a JSON schema often answer with the schema itself (``{"title":
    "Joke", "properties": …}``). Writing a required key ourselves (key order is free in JSON,
    so no valid answer is excluded) puts them on the instance. A key that is also a schema
    keyword (``title``, ``type`` …) would start an answer that reads like the schema, so
    another required key is preferred; when there is none, the prefill also opens the
    key's string value, where no schema can follow. An object schema with no properties at
    all is answered outright with ``{}``. Returns None when nothing can be fixed in advance.
    The text ends on a token boundary (after ``":`` or ``": "``).
    """
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if properties == {} and not schema.get("additionalProperties"):
        return "{}"
    if not isinstance(properties, Mapping):
        return None
    required = [k for k in properties if k in (schema.get("required") or [])]
    if not required:
        return None
    plain = [k for k in required if k not in _SCHEMA_WORDS]
    if plain:
        return "{" + json.dumps(plain[0], ensure_ascii=False) + ":"
    key = required[0]
    spec = properties.get(key)
    if isinstance(spec, Mapping) and spec.get("type") == "string":
        return "{" + json.dumps(key, ensure_ascii=False) + ': "'
    return None


def forced_call_prefill(choice: str, tools: Sequence[Mapping[str, Any]] = ()) -> str:
    """Assistant text that starts a tool call, so even a small model answers with one.

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


def response_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a ``response_format`` (None for ``json_object``).

    Accepts ``{"type": "json_object"}``, ``{"type": "json_schema", "schema": {…}}`` and the
    OpenAI form ``{"type": "json_schema", "json_schema": {"name": …, "schema": {…}}}``.
    """
    if not isinstance(response_format, Mapping):
        raise ConfigError(
            f"response_format must be a dict like {{'type': 'json_object'}}, not"
            f" {response_format!r}"
        )
    kind = response_format.get("type")
    if kind == "json_object":
        return None
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        schema = response_format.get("schema") or (
            inner.get("schema") if isinstance(inner, Mapping) else None
        )
        if not isinstance(schema, Mapping):
            raise ConfigError("response_format json_schema needs a 'schema' dict")
        return dict(schema)
    raise ConfigError(
        f"response_format type {kind!r} is not supported; use 'json_object' or 'json_schema'"
    )


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyPlan:
    """How one request is prompted and read.

    ``mode``: ``plain`` (text), ``tools`` (the model may call a tool), ``forced`` (a call was
    started for it) or ``json`` (a JSON object was started for it). ``render_tools`` are the
    tools the chat template shows; ``system_note`` is appended to the system turn;
    ``prefill`` is written after the generation prompt.
    """

    mode: ReplyMode = "plain"
    render_tools: tuple[dict[str, Any], ...] = ()
    tool_names: tuple[str, ...] = ()
    prefill: str = ""
    forced_name: str | None = None
    system_note: str = ""


def plan_reply(
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    response_format: Mapping[str, Any] | None = None,
) -> ReplyPlan:
    """Decide the prompt additions and the reading of one request."""
    if response_format is not None:
        if tools and normalize_tool_choice(tool_choice, tools) not in (None, "none"):
            raise ConfigError("tool_choice and response_format cannot both force the answer")
        schema = response_schema(response_format)
        # '{"' is one token in BPE vocabularies (Qwen2, Llama/SmolLM); a bare '{' would leave
        # the model mid-token and it tends to write unquoted keys.
        prefill = '{"'
        note = ""
        if schema is not None:
            note = SCHEMA_INSTRUCTION.format(schema=json.dumps(schema, ensure_ascii=False))
            prefill = object_start(schema) or prefill
        return ReplyPlan("json", prefill=prefill, system_note=note)
    if not tools:
        if tool_choice not in (None, "auto", "none", False):
            raise ConfigError(f"tool_choice={tool_choice!r} was given without tools")
        return ReplyPlan()
    specs = tuple(dict(t) for t in tools)
    names = tuple(tool_names(specs))
    choice = normalize_tool_choice(tool_choice, specs)
    if choice == "none":
        return ReplyPlan()
    if choice is None:
        return ReplyPlan("tools", render_tools=specs, tool_names=names)
    return ReplyPlan(
        "forced",
        render_tools=specs,
        tool_names=names,
        prefill=forced_call_prefill(choice, specs),
        forced_name=None if choice == "any" else choice,
    )


# --- streaming scanners ---------------------------------------------------------------------


class JsonObjectEnd:
    """Finds where the first top-level JSON object in a text stream closes.

    Used to stop generation as soon as a forced tool call or JSON answer is complete (small
    models keep talking after it).
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False
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


# --- the assembler ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """The assembled answer of one request."""

    text: str
    """Everything the assistant said: the prefill and the generated text."""
    content: str
    """The answer without tool-call markup (what a chat message shows)."""
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()
    finish_reason: ReplyFinishReason = "stop"
    extra_content: str = field(default="")
    """Content not streamed yet when the stream ended (held back, then found to be text)."""


class ReplyAssembler:
    """Turns streamed text into the content to show now and, at the end, the :class:`Reply`.

    :meth:`push` runs on the model's worker thread (so a finished forced call / JSON object
    stops the engine at once); :meth:`finish` runs on the caller's side after the last push.
    """

    def __init__(self, plan: ReplyPlan) -> None:
        self.plan = plan
        self._holdback = MarkupHoldback() if plan.mode == "tools" else None
        self._scanner: JsonObjectEnd | None = None
        self._kept: list[str] = []
        self._released: list[str] = []
        self._started = False
        self.complete = False
        """The forced call / JSON object has closed: generation should stop."""
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
        mode = self.plan.mode
        if mode == "plain":
            return text
        if self._holdback is not None:
            return self._holdback.push(text)
        assert self._scanner is not None
        if self.complete:
            return ""
        end = self._scanner.feed(text)
        if end >= 0:
            text = text[:end]
            self.complete = True
        self._kept.append(text)
        if mode == "json":  # a JSON answer is content: it streams, prefill first
            head = "" if self._started else self.plan.prefill
            self._started = True
            return head + text
        return ""

    @property
    def streamed(self) -> str:
        """Content already released to the caller."""
        return "".join(self._released)

    def finish(self, text: str, reason: str) -> Reply:
        """The reply, from the whole generated ``text`` and the engine's finish reason."""
        if self.complete and reason == "abort":
            reason = "stop"  # we stopped it ourselves once the answer was whole
        mode = self.plan.mode
        if mode == "plain":
            return Reply(text, text, finish_reason=reason)  # type: ignore[arg-type]
        kept = self.plan.prefill + "".join(self._kept)
        if mode == "json":
            return self._done(Reply(kept, kept, finish_reason=reason))  # type: ignore[arg-type]
        names = self.plan.tool_names
        if mode == "forced":
            content, calls, invalid = parse_tool_calls(kept, allow_bare_json=False, tools=names)
            if self.plan.forced_name:
                # We wrote the name ourselves: keep it even when the arguments are broken,
                # so the caller sees which tool the bad call was meant for.
                invalid = [replace(c, name=c.name or self.plan.forced_name) for c in invalid]
            text = kept
        else:
            content, calls, invalid = parse_tool_calls(text, tools=names)
        final: str = "tool_calls" if calls else reason
        return self._done(
            Reply(text, content, tuple(calls), tuple(invalid), final)  # type: ignore[arg-type]
        )

    def _done(self, reply: Reply) -> Reply:
        return replace(reply, extra_content=_remainder(reply.content, self.streamed))


def _remainder(content: str, streamed: str) -> str:
    """The part of the final content not streamed yet."""
    if not streamed:
        return content
    if content.startswith(streamed):
        return content[len(streamed):]
    head = streamed.strip()
    body = content.strip()
    return body[len(head):] if body.startswith(head) else ""


def with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """``messages`` with ``note`` appended to the system turn (one is added when missing)."""
    if not note:
        return messages
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{note}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


__all__ = [
    "JsonObjectEnd",
    "MarkupHoldback",
    "Reply",
    "ReplyAssembler",
    "ReplyPlan",
    "forced_call_prefill",
    "normalize_tool_choice",
    "object_start",
    "plan_reply",
    "response_schema",
    "tool_names",
    "with_system_note",
]


# --- choosing the tool of a forced call ----------------------------------------------------


def name_logprob(
    text: str, name: str, encode: Callable[[str], list[int]],
    logits: Callable[[list[int]], np.ndarray],
) -> float:
    """Log-probability that the model writes ``name`` and its closing quote after ``text``.

    The text and the name are tokenized together (a BPE tokenizer may merge the opening
    quote with the name's first letters); the tokens after the longest shared prefix with
    the text alone are scored.
    """
    base = encode(text)
    full = encode(text + name + '"')
    shared = 0
    for a, b in zip(base, full, strict=False):
        if a != b:
            break
        shared += 1
    shared = max(1, shared)
    rows = np.asarray(logits(full), dtype=np.float64)[shared - 1 : len(full) - 1]
    peak = rows.max(axis=1)
    log_norm = np.log(np.exp(rows - peak[:, None]).sum(axis=1)) + peak
    targets = np.asarray(full[shared:])
    return float((rows[np.arange(len(targets)), targets] - log_norm).sum())


def choose_tool(
    text: str, names: Sequence[str], encode: Callable[[str], list[int]],
    logits: Callable[[list[int]], np.ndarray],
) -> str:
    """The bound tool the model most likely names after ``text`` (a prompt ending in
    ``{"name": "``): constrained decoding of the name, one forward pass per tool."""
    return max(names, key=lambda name: name_logprob(text, name, encode, logits))
