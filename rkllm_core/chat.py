"""Chat messages → prompt text with the model's own chat template.

Templates are the Jinja2 templates Hugging Face tokenizers and GGUF/.rkllm files carry,
rendered in a sandbox with the helpers those templates expect (``raise_exception``,
``strftime_now``, ``tojson``). A model that only has the runtime's simple
system/prefix/postfix template is rendered with that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from .engine import ChatTemplateParts
from .errors import ConfigError

Message = Mapping[str, Any]

_ROLES = {"system", "user", "assistant", "tool"}


def _text_of(content: Any) -> str:
    """Message content as text: strings as they are, OpenAI-style part lists joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise ConfigError(
                    f"message content part {part!r} is not text; this model takes text only"
                )
        return "".join(parts)
    raise ConfigError(f"message content must be a string or a list of parts, got {content!r}")


def normalize_messages(messages: Sequence[Message], merge_repeated: bool = True) -> list[dict]:
    """Validate messages and merge consecutive ones of the same role (except tool results).

    Many chat templates reject two user turns in a row; merging them with a blank line keeps
    the conversation's meaning and satisfies the template.
    """
    out: list[dict] = []
    for index, raw in enumerate(messages):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"message {index} must be a mapping with 'role' and 'content'")
        role = raw.get("role")
        if role not in _ROLES:
            raise ConfigError(
                f"message {index} has role {role!r}; use one of {sorted(_ROLES)}"
            )
        message = dict(raw)
        message["content"] = _text_of(raw.get("content"))
        previous = out[-1] if out else None
        if (
            merge_repeated
            and previous is not None
            and previous["role"] == role
            and role != "tool"
            and not previous.get("tool_calls")
            and not message.get("tool_calls")
        ):
            previous["content"] = f"{previous['content']}\n\n{message['content']}"
            continue
        out.append(message)
    if not out:
        raise ConfigError("at least one message is needed")
    return out


def _raise(message: str) -> None:
    raise ConfigError(f"the chat template refused the messages: {message}")


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def tojson(value: Any, indent: int | None = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _tool_call_for_template(call: Mapping[str, Any]) -> dict:
    """Shape a tool call the way HF templates read it: {"type", "function": {name, arguments}}."""
    if "function" in call:
        return dict(call)
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": call.get("name"), "arguments": call.get("arguments", {})},
    }


_FALLBACK_TOOLS_PROMPT = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within"
    " <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _with_fallback_tools(
    msgs: list[dict], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict]:
    """Describe tools in the system turn and write past calls as ``<tool_call>`` text.

    For templates that know nothing of tools: without this the tools would be silently
    dropped and the model could not see its own earlier calls. The format is the Hermes /
    Qwen one that :func:`rkllm_core.parse_tool_calls` reads back.
    """
    out: list[dict] = []
    for message in msgs:
        calls = message.get("tool_calls")
        if calls:
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            rendered = [
                "<tool_call>\n"
                + json.dumps(
                    {"name": c.get("name"), "arguments": c.get("arguments", {})},
                    ensure_ascii=False,
                )
                + "\n</tool_call>"
                for c in calls
            ]
            message["content"] = "\n".join(filter(None, [message["content"], *rendered]))
        out.append(message)
    if not tools:
        return out
    listing = "\n".join(json.dumps(dict(t), ensure_ascii=False) for t in tools)
    instructions = _FALLBACK_TOOLS_PROMPT.format(tools=listing)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instructions}".lstrip()}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return out


class ChatRenderer:
    """Renders conversations for one model."""

    def __init__(
        self,
        template: str | None,
        parts: ChatTemplateParts | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.template = template
        self.parts = parts
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders a ``tools`` list (detected from its source)."""
        return bool(self.template and "tools" in self.template)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
    ) -> str:
        """Return the prompt text for ``messages`` (validated and merged first).

        When ``tools`` are given but the template cannot render them, they are described in
        the system turn in the Hermes ``<tool_call>`` convention instead of being dropped.
        """
        msgs = normalize_messages(messages)
        if not self.supports_tools and (tools or any(m.get("tool_calls") for m in msgs)):
            msgs = _with_fallback_tools(msgs, tools)
        for message in msgs:
            if message.get("tool_calls"):
                message["tool_calls"] = [_tool_call_for_template(c) for c in message["tool_calls"]]
        if self.template:
            variables: dict[str, Any] = {
                "messages": msgs,
                "add_generation_prompt": add_generation_prompt,
                "bos_token": self.bos_token,
                "eos_token": self.eos_token,
            }
            if tools:
                variables["tools"] = [dict(t) for t in tools]
            if enable_thinking is not None:
                variables["enable_thinking"] = enable_thinking
            return _compile(self.template).render(**variables)
        return self._render_parts(msgs, add_generation_prompt)

    def _render_parts(self, msgs: list[dict], add_generation_prompt: bool) -> str:
        parts = self.parts or ChatTemplateParts()
        text = ""
        if msgs[0]["role"] == "system":
            text += msgs[0]["content"] + "\n"
            msgs = msgs[1:]
        elif parts.system:
            text += parts.system
        for message in msgs:
            if message["role"] in ("user", "tool"):
                text += parts.prefix + message["content"] + parts.postfix
            else:
                text += message["content"]
        del add_generation_prompt  # the postfix already opens the assistant turn
        return text
