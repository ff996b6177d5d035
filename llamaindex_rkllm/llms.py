"""``RKLLM``: a LlamaIndex LLM over an RKLLM model (NPU on the board, PC engine elsewhere).

The reply (tool calls, forced tool calls, JSON answers, the deadline) is decided by the core
(:meth:`rkllm_core.RKLLMModel.stream`), exactly as for LangChain's ChatRKLLM; this module only
translates LlamaIndex messages and arguments to the core's and results back. Also:

- the model loads on first use, through the one shared loader (:func:`rkllm_core.load_shared`);
- completion derives from chat (one user turn in the model's own chat template), unless the
  prompt is ``formatted`` or a custom ``completion_to_prompt`` / ``messages_to_prompt`` is set;
- the async methods use the core's async streams, so they never block the event loop;
- unknown fields and per-call arguments are errors, never silently ignored;
- token usage and perf stats are in every response's ``raw`` and ``additional_kwargs``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt
from llama_index.core.types import PydanticProgramMode

from rkllm_core import (
    GenerationResult,
    RKLLMModel,
    SamplingFields,
    SamplingParams,
    sampling_defaults,
)

from ._loading import ModelLoading

if TYPE_CHECKING:
    from llama_index.core.prompts import BasePromptTemplate
    from llama_index.core.tools.types import BaseTool
    from pydantic import BaseModel

log = logging.getLogger(__name__)

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
# Per-call arguments about the reply (the rest are sampling arguments).
_REPLY_ARGS = ("tools", "tool_choice", "response_format", "timeout")


class RKLLM(ModelLoading, SamplingFields, FunctionCallingLLM):  # type: ignore[misc,valid-type]
    """LlamaIndex LLM for Rockchip RKLLM models (``.rkllm`` on the NPU, GGUF/HF on a PC).

    >>> from llamaindex_rkllm import RKLLM
    >>> llm = RKLLM(model="smollm2", max_tokens=64)
    >>> print(llm.complete("Name a colour.").text)

    The model is loaded on first use through :func:`rkllm_core.load_shared`, so an
    :class:`RKLLMEmbedding` (or a LangChain class) pointing at the same file and runtime config
    uses the same copy. Sampling fields (declared once in the core, with its bounds) left at
    ``None`` take the model's :class:`~rkllm_core.RuntimeConfig` value (greedy ``top_k=1`` by
    default, as in Rockchip's demo); ``max_new_tokens`` is accepted for ``max_tokens``.

    Function calling (``chat_with_tools``, agents) uses the Qwen / Hermes ``<tool_call>``
    convention; ``tool_required`` / ``tool_choice`` force the call by starting it for the
    model. ``structured_predict`` / ``as_structured_llm`` answer with a JSON object started
    for the model from the output class's schema. ``json_mode=True`` makes every answer a
    JSON object.
    """

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, protected_namespaces=(),
        arbitrary_types_allowed=True,
    )

    stop: list[str] | None = Field(default=None, description="Stop strings (not in output).")
    timeout: float | None = Field(
        default=None,
        gt=0.0,
        description="Seconds a call may take, time waiting for the model included (the core's"
        " deadline: a queued call past it never runs, a running one is stopped).",
    )
    json_mode: bool = Field(
        default=False, description="Answer every chat / completion with a JSON object."
    )
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further SamplingParams fields used on every call."
    )
    _model: RKLLMModel | None = PrivateAttr(default=None)

    def __init__(self, model: str | RKLLMModel = "smollm2", **kwargs: Any) -> None:
        loaded = model if isinstance(model, RKLLMModel) else None
        name = loaded.info.model_path if loaded is not None else str(model)
        super().__init__(model=name, **kwargs)
        self._model = loaded

    @model_validator(mode="after")
    def _check_sampling(self) -> RKLLM:
        # a typo or a bad value fails at construction, not at the first call
        SamplingParams.merge(self.generate_kwargs, self._default_sampling())
        return self

    @classmethod
    def class_name(cls) -> str:
        return "RKLLM_llm"

    @property
    def core_model(self) -> RKLLMModel:
        """The :class:`rkllm_core.RKLLMModel` (loaded on first access, shared)."""
        if self._model is None or self._model.closed:
            self._model = self._load_core()
        return self._model

    @property
    def metadata(self) -> LLMMetadata:
        model = self.core_model
        info, config = model.info, model.config
        # the usable window is what the model was loaded with, never more than it was trained on
        window = config.max_context_len
        if info.context_length:
            window = min(window, info.context_length)
        return LLMMetadata(
            context_window=window,
            num_output=self.max_tokens or config.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=model.renderer.supports_tools,
            model_name=info.model_name,
            system_role=MessageRole.SYSTEM,
        )

    # --- request building -------------------------------------------------------------

    def _default_sampling(self) -> dict[str, Any]:
        values = sampling_defaults(self)
        if self.stop is not None:
            values["stop"] = self.stop
        return values

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Core keyword arguments of one call: the reply's, then sampling merged by the core."""
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None) or None
        tool_required = bool(kwargs.pop("tool_required", False))
        kwargs.pop("allow_parallel_tool_calls", None)  # read by the response check only
        tool_choice = kwargs.pop("tool_choice", None)
        if tool_required and tool_choice in (None, "auto"):
            tool_choice = "required"
        response_format = kwargs.pop("response_format", None)
        if response_format is None and self.json_mode and not tools:
            response_format = {"type": "json_object"}
        timeout = kwargs.pop("timeout", None) or self.timeout
        unknown = sorted(k for k in kwargs if k not in SamplingParams.names())
        if unknown:
            raise ValueError(
                f"RKLLM does not understand {unknown}; per-call options are"
                f" {sorted(SamplingParams.names())}, {list(_REPLY_ARGS)} and tool_required"
            )
        sampling = SamplingParams.merge(self.generate_kwargs, self._default_sampling(), kwargs)
        return {
            "tools": tools,
            "tool_choice": tool_choice if tools else None,
            "response_format": response_format,
            "timeout": timeout,
            **sampling.model_dump(exclude_unset=True),
        }

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> str | list[dict[str, Any]]:
        if self.messages_to_prompt is not generic_messages_to_prompt:
            return self.messages_to_prompt(messages)
        return [to_core_message(m) for m in messages]

    def _completion_prompt(self, prompt: str, formatted: bool) -> str | list[dict[str, Any]]:
        """A completion is one user turn of a chat, unless the prompt is already formatted."""
        if formatted:
            return prompt  # already in the model's format: sent as is
        if self.completion_to_prompt is not default_completion_to_prompt:
            return self.completion_to_prompt(prompt)
        messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
        if self.system_prompt:
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt))
        return self._chat_prompt(messages)

    # --- the one request path (chat); completion derives from it ---------------------------

    def _chat(self, prompt: str | list[dict[str, Any]], kwargs: dict[str, Any]) -> ChatResponse:
        return _chat_response(self.core_model.generate(prompt, **self._options(kwargs)))

    async def _achat(
        self, prompt: str | list[dict[str, Any]], kwargs: dict[str, Any]
    ) -> ChatResponse:
        options = self._options(kwargs)
        return _chat_response(await self.core_model.agenerate(prompt, **options))

    def _stream_chat(
        self, prompt: str | list[dict[str, Any]], kwargs: dict[str, Any]
    ) -> ChatResponseGen:
        options = self._options(kwargs)  # errors now, not at the first next()
        model = self.core_model

        def gen() -> Generator[ChatResponse, None, None]:
            stream = model.stream(prompt, **options)
            text = ""
            try:
                for chunk in stream:
                    text += chunk.text
                    yield _text_chunk(text, chunk.text)
                result = stream.result
            finally:
                # a consumer that stops early (break, close, GC) cancels the request
                stream.close()
            yield _chat_response(result, delta="")

        return gen()

    def _astream_chat(
        self, prompt: str | list[dict[str, Any]], kwargs: dict[str, Any]
    ) -> ChatResponseAsyncGen:
        options = self._options(kwargs)
        model = self.core_model

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            stream = model.astream(prompt, **options)
            text = ""
            try:
                async for chunk in stream:
                    text += chunk.text
                    yield _text_chunk(text, chunk.text)
                result = await stream.aresult()
            finally:
                await stream.aclose()
            yield _chat_response(result, delta="")

        return gen()

    # --- chat -------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat, rendered with the model's own chat template."""
        return self._chat(self._chat_prompt(messages), kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the chat answer; the last item (empty delta) carries usage and tool calls.

        With ``tools``, tool-call markup (tagged or bare JSON) is never streamed as answer
        text: the parsed calls are ``ToolCallBlock`` s of the last item's message.
        """
        return self._stream_chat(self._chat_prompt(messages), kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`; never blocks the event loop."""
        return await self._achat(self._chat_prompt(messages), kwargs)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`; cancelling the consumer cancels the request."""
        return self._astream_chat(self._chat_prompt(messages), kwargs)

    # --- completion: chat with one user turn -----------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt`` (a user turn in the chat template unless ``formatted``)."""
        return _completion(self._chat(self._completion_prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the completion; the last item (empty delta) carries usage in ``raw``."""
        chats = self._stream_chat(self._completion_prompt(prompt, formatted), kwargs)

        def gen() -> Generator[CompletionResponse, None, None]:
            try:
                for response in chats:
                    yield _completion(response)
            finally:
                chats.close()

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`; waits on the core's async stream, not on a thread."""
        return _completion(await self._achat(self._completion_prompt(prompt, formatted), kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`; cancelling the consumer cancels the request."""
        chats = self._astream_chat(self._completion_prompt(prompt, formatted), kwargs)

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            try:
                async for response in chats:
                    yield _completion(response)
            finally:
                await chats.aclose()

        return gen()

    # --- structured output -------------------------------------------------------------------

    def _structured_messages(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> list[dict[str, Any]]:
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        return [to_core_message(m) for m in messages]

    def _schema_format(self, output_cls: type[BaseModel]) -> dict[str, Any]:
        return {"type": "json_schema", "schema": output_cls.model_json_schema()}

    def structured_predict(  # type: ignore[override]
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> BaseModel:
        """An ``output_cls`` instance: the answer is a JSON object that the core starts for
        the model from the class's schema (its first required key), then validated.

        With ``pydantic_program_mode`` other than DEFAULT, LlamaIndex's own programs run.
        """
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        kwargs = {**(llm_kwargs or {}), "response_format": self._schema_format(output_cls)}
        response = self._chat(self._structured_messages(prompt, prompt_args), kwargs)
        return output_cls.model_validate_json(response.message.content or "")

    async def astructured_predict(  # type: ignore[override]
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> BaseModel:
        """Async :meth:`structured_predict`."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(
                output_cls, prompt, llm_kwargs, **prompt_args
            )
        kwargs = {**(llm_kwargs or {}), "response_format": self._schema_format(output_cls)}
        response = await self._achat(self._structured_messages(prompt, prompt_args), kwargs)
        return output_cls.model_validate_json(response.message.content or "")

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
        """Messages and OpenAI-style tool specs for :meth:`chat` (the core renders them and
        forces the call when ``tool_required`` / ``tool_choice`` ask for one)."""
        specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        if tool_required and tool_choice in (None, "auto"):
            tool_choice = "required"
        return {"messages": messages, "tools": specs, "tool_choice": tool_choice, **kwargs}

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


def _text_chunk(text: str, delta: str) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def _chat_response(result: GenerationResult, delta: str | None = None) -> ChatResponse:
    """A core result as a LlamaIndex ChatResponse (content, tool calls, usage, perf)."""
    blocks: list[Any] = []
    if result.content or not result.tool_calls:
        blocks.append(TextBlock(text=result.content))
    blocks.extend(
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
        for c in result.tool_calls
    )
    meta = result.metadata()
    extra: dict[str, Any] = dict(meta["usage"])
    if result.invalid_tool_calls:
        extra["invalid_tool_calls"] = [
            {"raw": c.raw, "error": c.error, "name": c.name, "id": c.id}
            for c in result.invalid_tool_calls
        ]
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks),
        delta=delta,
        # everything the core reports (TokenCountingHandler reads ``usage``)
        raw={**meta, "text": result.text, "token_ids": list(result.token_ids)},
        additional_kwargs=extra,
    )


def _completion(response: ChatResponse) -> CompletionResponse:
    """A chat response as a completion response (the text, usage and raw report)."""
    return CompletionResponse(
        text=response.message.content or "",
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=dict(response.additional_kwargs),
    )
