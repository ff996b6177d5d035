"""ChatRKLLM: a LangChain chat model over RKLLM (NPU) or the PC engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict

from rkllm_core import GenerationResult, RKLLMModel, normalize_tool_choice, tool_names

from ._common import RKLLMParams, check_no_unknown
from ._messages import (
    lc_invalid_tool_calls,
    lc_tool_calls,
    response_metadata,
    to_core_messages,
)
from ._tools import format_tools

StructuredMethod = Literal["function_calling", "json_mode", "json_schema"]


class ChatRKLLM(RKLLMParams, BaseChatModel):
    """Chat model running Rockchip RKLLM models on the NPU, or any model on the PC engine.

    Construction is cheap: the model is loaded on first use and shared per process with
    every other ChatRKLLM / RKLLM / RKLLMEmbeddings pointing at the same file and runtime
    configuration. Concurrent calls (``batch``, threads, asyncio) queue on the model and
    each gets its own answer; the async methods never block the event loop.

    Example:
        .. code-block:: python

            from langchain_rkllm import ChatRKLLM

            llm = ChatRKLLM(model="smollm2", temperature=0, max_tokens=64)
            for chunk in llm.stream("Name three rivers."):
                print(chunk.content, end="", flush=True)

    Tools use the Qwen / Hermes ``<tool_call>`` convention (rendered by the model's chat
    template, or described in the system turn when the template has no tools support);
    ``tool_choice`` other than ``auto`` is enforced by starting the answer with the call.
    The reply (tool calls, forced calls, JSON answers, the deadline) is decided by
    :meth:`rkllm_core.RKLLMModel.stream`; this class translates messages and results.
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid")

    streaming: bool = False
    """Prefer streaming in ``invoke`` (answers are always produced by streaming anyway)."""

    @property
    def _llm_type(self) -> str:
        return "rkllm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, **self._default_sampling()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="rkllm",
            ls_model_name=kwargs.get("model") or self.model,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # --- tokens ----------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer."""
        return self._get_model().tokenize(text)

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` with the model's own tokenizer."""
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the conversation as the model sees it (rendered with its chat template)."""
        model = self._get_model()
        formatted = format_tools(tools) if tools else None
        return len(model.tokenize(model.render_chat(to_core_messages(messages), tools=formatted)))

    # --- one request ----------------------------------------------------------------------

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RKLLMModel, list[dict[str, Any]], dict[str, Any], str]:
        """Translate one call: LangChain messages and arguments → the core's."""
        kwargs = dict(kwargs)
        name = kwargs.pop("model", None) or self.model
        tools = kwargs.pop("tools", None)
        reply = {
            "tools": format_tools(tools) if tools else None,
            "tool_choice": kwargs.pop("tool_choice", None),
            "response_format": kwargs.pop("response_format", None),
        }
        kwargs.pop("ls_structured_output_format", None)
        options = self._call_options(stop, kwargs)
        check_no_unknown(kwargs, type(self).__name__)
        return self._get_model(name), to_core_messages(messages), {**reply, **options}, name

    def _iterate(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        model, core_messages, options, name = self._prepare(messages, stop, kwargs)
        stream = model.stream(core_messages, **options)
        try:
            for piece in stream:
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece.text))
            result = stream.result
        finally:
            stream.close()  # no-op when finished; cancels when the caller stopped early
        yield _final_chunk(result, name)

    async def _aiterate(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[ChatGenerationChunk]:
        model, core_messages, options, name = self._prepare(messages, stop, kwargs)
        stream = model.astream(core_messages, **options)
        try:
            async for piece in stream:
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece.text))
            result = await stream.aresult()
        finally:
            await stream.aclose()
        yield _final_chunk(result, name)

    # --- BaseChatModel hooks --------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # LangChain's stream() reports each chunk to on_llm_new_token itself.
        yield from self._iterate(messages, stop, kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._aiterate(messages, stop, kwargs):
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks: list[ChatGenerationChunk] = []
        for chunk in self._iterate(messages, stop, kwargs):
            if run_manager and chunk.message.chunk_position != "last":
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return _to_result(chunks)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks: list[ChatGenerationChunk] = []
        async for chunk in self._aiterate(messages, stop, kwargs):
            if run_manager and chunk.message.chunk_position != "last":
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            chunks.append(chunk)
        return _to_result(chunks)

    # --- tools and structured output ------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; calls come back as ``AIMessage.tool_calls``.

        ``tool_choice``: None / 'auto' (the model decides), 'none', 'any' / 'required' / True
        (some tool must be called), or a tool name / OpenAI-style dict (that tool).
        """
        formatted = format_tools(tools)
        if tool_choice is not None:
            normalize_tool_choice(tool_choice, formatted)  # fail now, not at the first call
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: StructuredMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers shaped by ``schema`` (pydantic class, TypedDict, JSON schema or tool).

        ``method``: 'json_schema' (the schema is given to the model and the answer starts
        as a JSON object), 'function_calling' (a forced call of a tool made from the schema)
        or 'json_mode' (a JSON object; describe the keys in the prompt). ``strict`` is
        accepted for compatibility; the answer is always validated by the parser.
        """
        if kwargs:
            raise ValueError(f"unexpected arguments {sorted(kwargs)}")
        del strict  # there is no server-side schema enforcement to switch on
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {"kwargs": {"method": method}, "schema": schema}
        parser: Runnable
        if method == "function_calling":
            if schema is None:
                raise ValueError("schema is required for method='function_calling'")
            tool = format_tools([schema])[0]
            name = tool_names([tool])[0]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format={
                **ls_format, "kwargs": {"method": method}})
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                if schema is None:
                    raise ValueError("schema is required for method='json_schema'")
                response_format = {"type": "json_schema", "schema": convert_to_json_schema(schema)}
            else:
                response_format = {"type": "json_object"}
            llm = self.bind(response_format=response_format, ls_structured_output_format=ls_format)
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'json_schema', 'function_calling' or 'json_mode', not {method!r}"
            )
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks(
            [parser_none], exception_key="parsing_error"
        )
        return RunnableMap(raw=llm) | parser_with_fallback


# --- helpers ------------------------------------------------------------------------------------


def _final_chunk(result: GenerationResult, name: str) -> ChatGenerationChunk:
    """The last chunk: no new content (the core streamed it all), the calls and the usage."""
    message = AIMessageChunk(
        content="",
        tool_calls=lc_tool_calls(result.tool_calls),
        invalid_tool_calls=lc_invalid_tool_calls(result.invalid_tool_calls),
        usage_metadata=UsageMetadata(
            input_tokens=result.usage.prompt_tokens,
            output_tokens=result.usage.completion_tokens,
            total_tokens=result.usage.total_tokens,
        ),
        response_metadata=response_metadata(result, name),
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)


def _to_result(chunks: list[ChatGenerationChunk]) -> ChatResult:
    final = chunks[-1].message
    assert isinstance(final, AIMessageChunk)
    content = "".join(c.text for c in chunks)
    message = AIMessage(
        content=content,
        tool_calls=final.tool_calls,
        invalid_tool_calls=final.invalid_tool_calls,
        usage_metadata=final.usage_metadata,
        response_metadata=final.response_metadata,
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=dict(final.response_metadata))]
    )
