"""``RKLLM``: a LlamaIndex LLM over an RKLLM model (NPU on the board, PC engine elsewhere).

Differences from a ``CustomLLM`` wrapper, on purpose:

- the async methods use the core's async streams, so they never block the event loop;
- chats are rendered with the model's own chat template (not a generic "role: content" one),
  unless the user passes ``messages_to_prompt`` / ``completion_to_prompt`` explicitly;
- per-call kwargs (``max_tokens``, ``temperature``, ``stop``, ``seed`` …) reach the sampler, and
  an unknown kwarg is an error rather than silently ignored;
- token usage and perf stats are in every response's ``raw`` and ``additional_kwargs``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from llama_index.core.base.llms.generic_utils import (
    messages_to_prompt as generic_messages_to_prompt,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt

from rkllm_core import GenerationResult, RKLLMModel, RuntimeConfig, SamplingParams

from ._loading import load_model

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

log = logging.getLogger(__name__)

# Per-call kwargs that go to the sampler under their own name.
_SAMPLING_KWARGS = frozenset(SamplingParams.model_fields) - {"max_new_tokens"}
# LlamaIndex / OpenAI spellings of the same thing.
_ALIASES = {"max_tokens": "max_new_tokens", "max_new_tokens": "max_new_tokens"}

_ROLE_MAP: dict[str, str] = {
    MessageRole.SYSTEM.value: "system",
    MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user",
    MessageRole.ASSISTANT.value: "assistant",
    MessageRole.MODEL.value: "assistant",
    MessageRole.CHATBOT.value: "assistant",
    MessageRole.TOOL.value: "tool",
    MessageRole.FUNCTION.value: "tool",
}

# Used when the model's chat template cannot render a tool list itself: the same
# <tool_call> convention the core parses, described in a system message.
_TOOLS_PREAMBLE = (
    "You can call the following tools. Their signatures are JSON schemas:\n<tools>\n{tools}\n"
    "</tools>\nTo call a tool, answer with one line per call:\n"
    '<tool_call>{{"name": <tool name>, "arguments": <arguments as a JSON object>}}</tool_call>'
)
_TOOL_REQUIRED = "You must answer with a tool call."


class _ToolMarkupGate:
    """Holds back streamed text from the first ``<tool_call>`` on, when tools were offered.

    The calls themselves arrive parsed in the final chunk; streaming their JSON as answer
    text would show agents' users raw markup. A partial tag at the end of a piece is kept
    until the next piece tells whether it is one.
    """

    TAG = "<tool_call>"

    def __init__(self, active: bool) -> None:
        self.active = active
        self._pending = ""
        self._closed = False

    def push(self, text: str) -> str:
        if not self.active:
            return text
        if self._closed:
            return ""
        pending = self._pending + text
        index = pending.find(self.TAG)
        if index >= 0:
            self._closed, self._pending = True, ""
            return pending[:index]
        keep = next(
            (
                n
                for n in range(min(len(pending), len(self.TAG) - 1), 0, -1)
                if self.TAG.startswith(pending[-n:])
            ),
            0,
        )
        self._pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """Text held back at the end that turned out not to be a tag."""
        tail, self._pending = self._pending, ""
        return tail


class RKLLM(FunctionCallingLLM):
    """LlamaIndex LLM for Rockchip RKLLM models (``.rkllm`` on the NPU, GGUF/HF on a PC).

    >>> from llamaindex_rkllm import RKLLM
    >>> llm = RKLLM(model="smollm2", max_new_tokens=64)
    >>> print(llm.complete("Name a colour.").text)

    The model is loaded through :func:`rkllm_core.shared_model`, so an :class:`RKLLMEmbedding`
    (or a LangChain class) pointing at the same file and runtime config uses the same copy.
    Sampling fields left at ``None`` take the model's :class:`~rkllm_core.RuntimeConfig` value
    (greedy ``top_k=1`` by default, as in Rockchip's demo).
    """

    model: str = Field(
        default="smollm2",
        description="Model file or directory (.rkllm, .gguf, HF dir) or a known demo name.",
    )
    backend: Literal["auto", "npu", "pc"] = Field(
        default="auto", description="'npu' for .rkllm files, 'pc' otherwise ('auto' picks)."
    )
    runtime_config: RuntimeConfig | None = Field(
        default=None,
        description="Runtime parameters the model is loaded with (None: the defaults, shared).",
    )
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Load with this max_context_len (None: the runtime config's).",
    )
    max_new_tokens: int | None = Field(
        default=None, gt=0, description="Tokens generated per call (None: runtime config's)."
    )
    temperature: float | None = Field(default=None, ge=0.0)
    top_k: int | None = Field(default=None, ge=0, description="1 = greedy; 0 = no filter.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = Field(default=None, description="Sampling seed (reproducible output).")
    stop: list[str] | None = Field(default=None, description="Stop strings (not in output).")
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further SamplingParams fields used on every call."
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the engine (e.g. tokenizer=<dir>)."
    )

    _model: RKLLMModel = PrivateAttr()

    def __init__(self, model: str | RKLLMModel = "smollm2", **kwargs: Any) -> None:
        loaded = model if isinstance(model, RKLLMModel) else None
        name = loaded.info.model_path if loaded is not None else str(model)
        super().__init__(model=name, **kwargs)
        # validate the defaults once, here, so a typo fails at construction
        SamplingParams(**self._default_sampling())
        self._model = loaded or load_model(
            self.model,
            self.runtime_config,
            self.context_window,
            self.backend,
            self.engine_options,
        )

    @classmethod
    def class_name(cls) -> str:
        return "RKLLM_llm"

    @property
    def core_model(self) -> RKLLMModel:
        """The loaded :class:`rkllm_core.RKLLMModel` (shared with other classes)."""
        return self._model

    @property
    def metadata(self) -> LLMMetadata:
        info = self._model.info
        config = self._model.config
        # the usable window is what the model was loaded with, never more than it was trained on
        window = config.max_context_len
        if info.context_length:
            window = min(window, info.context_length)
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens or config.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=self._model.renderer.supports_tools,
            model_name=info.model_name,
            system_role=MessageRole.SYSTEM,
        )

    # --- request building -------------------------------------------------------------

    def _default_sampling(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.generate_kwargs)
        for name in (
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "repeat_penalty",
            "seed",
            "stop",
        ):
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        return values

    def _sampling(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Per-call kwargs over the instance defaults, as SamplingParams fields."""
        values = self._default_sampling()
        unknown = []
        for key, value in kwargs.items():
            if key in _ALIASES:
                if value is not None:
                    values[_ALIASES[key]] = value
            elif key in _SAMPLING_KWARGS:
                values[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"RKLLM does not understand {sorted(unknown)}; per-call options are"
                f" max_tokens and {sorted(_SAMPLING_KWARGS)}"
            )
        SamplingParams(**values)  # fail here, before anything is queued
        return values

    def _completion_prompt(self, prompt: str, formatted: bool) -> str | list[dict[str, Any]]:
        if formatted:
            return prompt  # already in the model's format: sent as is
        if self.completion_to_prompt is not default_completion_to_prompt:
            return self.completion_to_prompt(prompt)
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def _chat_prompt(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]] | None,
        tool_required: bool,
    ) -> str | list[dict[str, Any]]:
        if self.messages_to_prompt is not generic_messages_to_prompt:
            return self.messages_to_prompt(messages)
        converted = [to_core_message(m) for m in messages]
        notes = []
        if tools and not self._model.renderer.supports_tools:
            specs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
            notes.append(_TOOLS_PREAMBLE.format(tools=specs))
        if tools and tool_required:
            notes.append(_TOOL_REQUIRED)
        if notes:
            converted = _with_system_note(converted, "\n\n".join(notes))
        return converted

    # --- completion ---------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt`` (wrapped as a user turn in the chat template unless formatted)."""
        params = self._sampling(kwargs)
        result = self._model.generate(self._completion_prompt(prompt, formatted), **params)
        return CompletionResponse(
            text=result.text, raw=_raw(result), additional_kwargs=_usage(result)
        )

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the completion; the last item (empty delta) carries usage in ``raw``."""
        params = self._sampling(kwargs)
        request = self._completion_prompt(prompt, formatted)

        def gen() -> Generator[CompletionResponse, None, None]:
            stream = self._model.stream(request, **params)
            text = ""
            try:
                for chunk in stream:
                    text += chunk.text
                    yield CompletionResponse(text=text, delta=chunk.text)
                result = stream.result
            finally:
                # a consumer that stops early (break, close, GC) cancels the request
                stream.close()
            yield CompletionResponse(
                text=result.text, delta="", raw=_raw(result), additional_kwargs=_usage(result)
            )

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`; waits on the core's async stream, not on a thread."""
        params = self._sampling(kwargs)
        result = await self._model.agenerate(self._completion_prompt(prompt, formatted), **params)
        return CompletionResponse(
            text=result.text, raw=_raw(result), additional_kwargs=_usage(result)
        )

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`; cancelling the consumer cancels the request."""
        params = self._sampling(kwargs)
        request = self._completion_prompt(prompt, formatted)

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            stream = self._model.astream(request, **params)
            text = ""
            try:
                async for chunk in stream:
                    text += chunk.text
                    yield CompletionResponse(text=text, delta=chunk.text)
                result = await stream.aresult()
            finally:
                await stream.aclose()
            yield CompletionResponse(
                text=result.text, delta="", raw=_raw(result), additional_kwargs=_usage(result)
            )

        return gen()

    # --- chat -------------------------------------------------------------------------------

    def _chat_request(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[str | list[dict[str, Any]], dict[str, Any]]:
        tools = kwargs.pop("tools", None) or None
        tool_required = bool(kwargs.pop("tool_required", False))
        # only meaningful to the response check in chat_with_tools
        kwargs.pop("allow_parallel_tool_calls", None)
        params = self._sampling(kwargs)
        prompt = self._chat_prompt(messages, tools, tool_required)
        if tools:
            params["tools"] = list(tools)
        return prompt, params

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat, rendered with the model's own chat template."""
        prompt, params = self._chat_request(messages, dict(kwargs))
        return _chat_response(self._model.generate(prompt, **params))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the chat answer; the last item (empty delta) carries usage and tool calls.

        With ``tools``, text from a ``<tool_call>`` tag on is not streamed as answer text: the
        parsed calls are ``ToolCallBlock`` s of the last item's message.
        """
        prompt, params = self._chat_request(messages, dict(kwargs))

        def gen() -> Generator[ChatResponse, None, None]:
            stream = self._model.stream(prompt, **params)
            gate = _ToolMarkupGate(bool(params.get("tools")))
            text = ""
            try:
                for chunk in stream:
                    delta = gate.push(chunk.text)
                    if delta:
                        text += delta
                        yield _text_chunk(text, delta)
                if tail := gate.flush():
                    text += tail
                    yield _text_chunk(text, tail)
                result = stream.result
            finally:
                stream.close()
            yield _chat_response(result, delta="")

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`; never blocks the event loop."""
        prompt, params = self._chat_request(messages, dict(kwargs))
        return _chat_response(await self._model.agenerate(prompt, **params))

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`; cancelling the consumer cancels the request."""
        prompt, params = self._chat_request(messages, dict(kwargs))

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            stream = self._model.astream(prompt, **params)
            gate = _ToolMarkupGate(bool(params.get("tools")))
            text = ""
            try:
                async for chunk in stream:
                    delta = gate.push(chunk.text)
                    if delta:
                        text += delta
                        yield _text_chunk(text, delta)
                if tail := gate.flush():
                    text += tail
                    yield _text_chunk(text, tail)
                result = await stream.aresult()
            finally:
                await stream.aclose()
            yield _chat_response(result, delta="")

        return gen()

    # --- function calling ---------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Messages and OpenAI-style tool specs for :meth:`chat` (the core renders them)."""
        specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
        choice = _tool_choice_name(tool_choice)
        if choice == "none":
            specs = []
        elif choice in ("required", "any"):
            tool_required = True
        elif choice not in (None, "auto"):
            # one named tool: offer only that one and ask for a call
            specs = [s for s in specs if s["function"]["name"] == choice]
            if not specs:
                raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
            tool_required = True
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        return {
            "messages": messages,
            "tools": specs,
            "tool_required": tool_required and bool(specs),
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first tool call unless parallel calls are allowed."""
        if allow_parallel_tool_calls:
            return response
        seen = False
        blocks = []
        for block in response.message.blocks:
            if isinstance(block, ToolCallBlock):
                if seen:
                    continue
                seen = True
            blocks.append(block)
        response.message.blocks = blocks
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        """The tool calls the model made, as ``ToolSelection`` objects."""
        selections = []
        for block in response.message.blocks:
            if not isinstance(block, ToolCallBlock):
                continue
            arguments = block.tool_kwargs
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments or "{}")
                except json.JSONDecodeError:
                    arguments = {}
            selections.append(
                ToolSelection(
                    tool_id=block.tool_call_id or "",
                    tool_name=block.tool_name,
                    tool_kwargs=arguments,
                )
            )
        if not selections and error_on_no_tool_call:
            invalid = response.additional_kwargs.get("invalid_tool_calls")
            detail = f" (unparsable: {invalid})" if invalid else ""
            raise ValueError(f"expected at least one tool call in the response{detail}")
        return selections


# --- conversions --------------------------------------------------------------------------


def to_core_message(message: ChatMessage) -> dict[str, Any]:
    """A LlamaIndex ``ChatMessage`` as the core's OpenAI-style message dict."""
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    if role not in _ROLE_MAP:
        raise ValueError(f"RKLLM cannot render a message with role {role!r}")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            calls.append(
                {
                    "id": block.tool_call_id,
                    "name": block.tool_name,
                    "arguments": _arguments(block.tool_kwargs),
                }
            )
        elif isinstance(block, ThinkingBlock):
            continue  # earlier reasoning is not replayed to the model
        elif type(block).__name__ == "CachePoint":
            continue  # a provider cache hint, nothing to render
        else:
            raise ValueError(f"RKLLM takes text only; a message has a {type(block).__name__}")
    if not calls:
        calls = [_legacy_call(c) for c in message.additional_kwargs.get("tool_calls") or []]
    out: dict[str, Any] = {"role": _ROLE_MAP[role], "content": "\n".join(texts)}
    if calls and out["role"] == "assistant":
        out["tool_calls"] = calls
    if out["role"] == "tool":
        call_id = message.additional_kwargs.get("tool_call_id")
        if call_id:
            out["tool_call_id"] = call_id
        name = message.additional_kwargs.get("name") or message.additional_kwargs.get("tool_name")
        if name:
            out["name"] = name
    return out


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except json.JSONDecodeError:
            return {"_raw": value}
    return dict(value) if isinstance(value, Mapping) else {"_raw": value}


def _legacy_call(call: Any) -> dict[str, Any]:
    """A tool call stored in ``additional_kwargs['tool_calls']`` (OpenAI dicts or objects)."""
    if not isinstance(call, Mapping):
        call = call.model_dump() if hasattr(call, "model_dump") else vars(call)
    function = call.get("function") or call
    return {
        "id": call.get("id"),
        "name": function.get("name"),
        "arguments": _arguments(function.get("arguments", {})),
    }


def _with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{note}" if first["content"] else note
        return [first, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _tool_choice_name(choice: str | Mapping[str, Any] | None) -> str | None:
    if choice is None or isinstance(choice, str):
        return choice
    function = choice.get("function")
    if isinstance(function, Mapping) and function.get("name"):
        return str(function["name"])
    return str(choice.get("name") or choice.get("type") or "auto")


def _usage(result: GenerationResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def _raw(result: GenerationResult) -> dict[str, Any]:
    """Everything the core reports about the run (TokenCountingHandler reads ``usage``)."""
    perf = result.perf
    return {
        "model": result.model,
        "finish_reason": result.finish_reason,
        "usage": _usage(result),
        "perf": {
            "prefill_ms": perf.prefill_ms,
            "prefill_tokens": perf.prefill_tokens,
            "decode_ms": perf.decode_ms,
            "decode_tokens": perf.decode_tokens,
            "memory_mb": perf.memory_mb,
        },
        "text": result.text,
        "token_ids": list(result.token_ids),
    }


def _text_chunk(text: str, delta: str) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def _chat_response(result: GenerationResult, delta: str | None = None) -> ChatResponse:
    blocks: list[Any] = []
    if result.content or not result.tool_calls:
        blocks.append(TextBlock(text=result.content))
    blocks.extend(
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
        for c in result.tool_calls
    )
    extra = _usage(result)
    if result.invalid_tool_calls:
        extra["invalid_tool_calls"] = [
            {"raw": c.raw, "error": c.error, "name": c.name, "id": c.id}
            for c in result.invalid_tool_calls
        ]
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks),
        delta=delta,
        raw=_raw(result),
        additional_kwargs=extra,
    )
