"""``POST /v1/chat/completions``: streamed (server-sent events) or whole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from .. import RKLLMModel
from .errors import bad_request
from .responses import EventStreamAnswer, JSONAnswer
from .schema import ChatCompletionRequest, parse_body, read_body
from .state import ServerState
from .translate import (
    chat_chunk,
    chat_messages,
    chat_response,
    check_response_format,
    check_tools,
    finish_reason,
    new_id,
    now,
    sampling_kwargs,
    tool_call_body,
    usage_chunk,
)


def _chat_call(model: RKLLMModel, body: ChatCompletionRequest,
               timeout: float | None) -> Callable[[], Any]:
    """Validate what the server can up front; return what starts the model's async stream.

    Tools, tool_choice and response_format go to the core as they are: it plans the reply
    (forced calls, JSON prefill), holds tool-call markup back while content streams, and
    parses the calls, as for every framework adapter.
    """
    kwargs = sampling_kwargs(body)
    messages = chat_messages(body.messages)
    tools = check_tools(body.tools)
    response_format = check_response_format(body.response_format)
    if body.tool_choice is not None and not tools and body.tool_choice != "none":
        raise bad_request("tool_choice needs tools", param="tool_choice")

    def start() -> Any:
        return model.astream(messages, tools=tools, tool_choice=body.tool_choice,
                             response_format=response_format, timeout=timeout, **kwargs)

    return start


async def _chat_events(start: Callable[[], Any], body: ChatCompletionRequest, rid: str,
                       created: int) -> AsyncIterator[dict]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    name = body.model
    stream = start()
    try:
        pieces = aiter(stream)
        first = await anext(pieces, None)  # the request has started (or failed) by now
        yield chat_chunk(rid, created, name, {"role": "assistant", "content": ""},
                         with_usage=include_usage)
        if first is not None and first.text:
            yield chat_chunk(rid, created, name, {"content": first.text},
                             with_usage=include_usage)
        async for piece in pieces:
            if piece.text:
                yield chat_chunk(rid, created, name, {"content": piece.text},
                                 with_usage=include_usage)
        result = await stream.aresult()
        if result.tool_calls:
            calls = [tool_call_body(c, i) for i, c in enumerate(result.tool_calls)]
            yield chat_chunk(rid, created, name, {"tool_calls": calls}, with_usage=include_usage)
        yield chat_chunk(rid, created, name, {}, finish_reason(result), with_usage=include_usage)
        if include_usage:
            yield usage_chunk(rid, created, name, result.usage, "chat.completion.chunk")
    finally:
        await stream.aclose()


async def chat_completions(request: Request) -> Any:
    state: ServerState = request.app.state.server
    raw = await read_body(request, state.config.max_body_bytes)
    body = parse_body(raw, ChatCompletionRequest)
    model = state.ready_model(body.model)
    start = _chat_call(model, body, state.config.request_timeout_s)
    rid, created = new_id("chatcmpl"), now()
    ticket = state.admission.acquire()
    if body.stream:
        return EventStreamAnswer(_chat_events(start, body, rid, created), ticket)

    async def compute() -> dict:
        stream = start()
        try:
            result = await stream.aresult()
        finally:
            await stream.aclose()
        return chat_response(rid, created, body.model, result)

    return JSONAnswer(compute, ticket)
