"""OpenAI request fields → core call arguments, and core results → OpenAI response bodies.

Translation only: sampling, tool-call parsing and structured output are decided by
:class:`~rkllm_core.RKLLMModel`, exactly as for the LangChain and LlamaIndex adapters.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from .. import GenerationResult, SamplingParams, ToolCall, Usage
from .errors import APIError, bad_request
from .schema import ChatCompletionRequest, CompletionRequest, SamplingFields

# OpenAI name → core SamplingParams name (the other sampling fields keep their names)
_RENAMED = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
_SAMPLING = (
    "temperature", "top_p", "top_k", "max_tokens", "repeat_penalty", "frequency_penalty",
    "presence_penalty", "mirostat", "mirostat_tau", "mirostat_eta", "seed",
)


def new_id(prefix: str) -> str:
    """A response id in OpenAI's style (``chatcmpl-…``, ``cmpl-…``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """The ``created`` timestamp."""
    return int(time.time())


# --- requests -----------------------------------------------------------------------------


def refuse_unsupported(body: SamplingFields) -> None:
    """400 for fields this server cannot honour (rather than silently ignoring them)."""
    if body.n not in (None, 1):
        raise bad_request("n > 1 is not supported: send the request n times", param="n")
    if body.logprobs not in (None, False, 0):
        raise bad_request("logprobs are not supported by this server", param="logprobs")
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by this server", param="logit_bias")
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs:
        raise bad_request("top_logprobs is not supported by this server", param="top_logprobs")
    if isinstance(body, CompletionRequest):
        if body.echo:
            raise bad_request("echo is not supported by this server", param="echo")
        if body.suffix:
            raise bad_request("suffix (insertion) is not supported by this server", param="suffix")
        if body.best_of not in (None, 1):
            raise bad_request("best_of > 1 is not supported by this server", param="best_of")


def sampling_kwargs(body: SamplingFields) -> dict[str, Any]:
    """The core's sampling keyword arguments for a request, validated by the core's rules."""
    refuse_unsupported(body)
    values: dict[str, Any] = {}
    for name in _SAMPLING:
        value = getattr(body, name)
        if value is not None:
            values[_RENAMED.get(name, name)] = value
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        values["max_new_tokens"] = body.max_completion_tokens
    if body.stop:
        values["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    try:
        SamplingParams(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        openai_name = "max_tokens" if field == "max_new_tokens" else field
        raise bad_request(
            f"{openai_name}: {error['msg']}", param=openai_name, code="invalid_value"
        ) from None
    return values


def _tool_call_to_core(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise bad_request(f"{where} must be an object", param=where)
    function = call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise bad_request(f"{where}.function.name is missing", param=where)
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise bad_request(
                f"{where}.function.arguments is not valid JSON: {exc}", param=where
            ) from None
    return {"id": call.get("id"), "name": function["name"], "arguments": arguments}


def chat_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages → the core's message dicts (``developer`` is a system turn)."""
    out: list[dict[str, Any]] = []
    for index, raw in enumerate(messages):
        if not isinstance(raw, Mapping):
            raise bad_request(f"messages[{index}] must be an object", param=f"messages[{index}]")
        message = {k: v for k, v in raw.items() if v is not None}
        if message.get("role") == "developer":
            message["role"] = "system"
        if message.get("role") == "function":
            raise bad_request(
                "the legacy 'function' role is not supported; use 'tool' messages",
                param=f"messages[{index}].role",
            )
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [
                _tool_call_to_core(c, f"messages[{index}].tool_calls[{i}]")
                for i, c in enumerate(calls)
            ]
        out.append(message)
    return out


def check_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Validate OpenAI tool definitions (function tools with a name)."""
    if not tools:
        return None
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if tool.get("type", "function") != "function" or not isinstance(function, Mapping) or (
            not isinstance(function.get("name"), str)
        ):
            raise bad_request(
                f"tools[{index}] must be {{'type': 'function', 'function': {{'name': …}}}}",
                param=f"tools[{index}]",
            )
        parameters = function.get("parameters")
        if parameters is not None:
            check_json_schema(parameters, f"tools[{index}].function.parameters")
    return list(tools)


def check_json_schema(schema: Any, param: str) -> None:
    """400 unless ``schema`` is a valid JSON Schema object."""
    if not isinstance(schema, Mapping):
        raise bad_request(f"{param} must be a JSON Schema object", param=param,
                          code="invalid_json_schema")
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - jsonschema comes with the [serve] extra
        return
    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as exc:
        raise bad_request(
            f"{param} is not a valid JSON Schema: {exc.message}", param=param,
            code="invalid_json_schema",
        ) from None


def check_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate ``response_format``; None for plain text."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise bad_request(
                "response_format json_schema needs {'json_schema': {'name': …, 'schema': {…}}}",
                param="response_format", code="invalid_json_schema",
            )
        check_json_schema(spec["schema"], "response_format.json_schema.schema")
        return dict(response_format)
    raise bad_request(
        f"response_format type {kind!r} is not supported; use 'text', 'json_object' or"
        " 'json_schema'", param="response_format",
    )


# --- responses ----------------------------------------------------------------------------


def usage_body(usage: Usage) -> dict[str, int]:
    """OpenAI ``usage``."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def tool_call_body(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """An OpenAI tool call (arguments as a JSON string); ``index`` for stream deltas."""
    body: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments,
                                                               ensure_ascii=False)},
    }
    if index is not None:
        body["index"] = index
    return body


def finish_reason(result: GenerationResult) -> str:
    """OpenAI finish_reason of a finished result (the core's, where OpenAI has it)."""
    if result.tool_calls or result.finish_reason == "tool_calls":
        return "tool_calls"
    if result.finish_reason == "length":
        return "length"
    return "stop"


def message_content(result: GenerationResult) -> str | None:
    """The assistant content as the core assembled it (None when the reply is only calls)."""
    if result.tool_calls and not result.content:
        return None
    return result.content


def chat_response(rid: str, created: int, model: str, result: GenerationResult) -> dict:
    """A whole ``chat.completion`` body."""
    message: dict[str, Any] = {"role": "assistant", "content": message_content(result)}
    if result.tool_calls:
        message["tool_calls"] = [tool_call_body(c) for c in result.tool_calls]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(result)}],
        "usage": usage_body(result.usage),
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, Any],
               finish: str | None = None, usage: dict | None = None,
               with_usage: bool = False) -> dict:
    """One ``chat.completion.chunk``."""
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        chunk["usage"] = usage
    return chunk


def usage_chunk(rid: str, created: int, model: str, usage: Usage, obj: str) -> dict:
    """The last stream chunk when ``stream_options.include_usage`` is set: no choices."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage_body(usage)}


def completion_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    """One choice of a ``text_completion``."""
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def completion_body(rid: str, created: int, model: str, choices: list[dict],
                    usage: dict | None) -> dict:
    """A ``text_completion`` body (whole, or one stream chunk)."""
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created,
                            "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def raise_for_model(requested: str, served: Sequence[str]) -> None:
    """404 unless the request names the served model."""
    if requested not in served:
        raise APIError(
            404,
            f"The model {requested!r} does not exist on this server; it serves"
            f" {served[0]!r} (GET /v1/models)",
            code="model_not_found",
            param="model",
        )
