"""``POST /v1/completions``: raw prompts (text, several texts, token ids), streamed or whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from .. import RKLLMModel
from .errors import bad_request
from .responses import EventStreamAnswer, JSONAnswer
from .schema import CompletionRequest, parse_body, read_body
from .state import ServerState
from .translate import (
    completion_body,
    completion_choice,
    finish_reason,
    new_id,
    now,
    sampling_kwargs,
)


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


async def _completion_events(model: RKLLMModel, prompts: list, kwargs: dict,
                             timeout: float | None, body: CompletionRequest, rid: str,
                             created: int) -> AsyncIterator[dict]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prompt_tokens = completion_tokens = 0
    for index, prompt in enumerate(prompts):
        stream = model.astream(prompt, timeout=timeout, **kwargs)
        try:
            async for piece in stream:
                if piece.text:
                    yield completion_body(rid, created, body.model,
                                          [completion_choice(index, piece.text, None)], None)
            result = await stream.aresult()
        finally:
            await stream.aclose()
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        yield completion_body(rid, created, body.model,
                              [completion_choice(index, "", finish_reason(result))], None)
    if include_usage:
        yield completion_body(rid, created, body.model, [], {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })


async def completions(request: Request) -> Any:
    state: ServerState = request.app.state.server
    raw = await read_body(request, state.config.max_body_bytes)
    body = parse_body(raw, CompletionRequest)
    model = state.ready_model(body.model)
    kwargs = sampling_kwargs(body)
    prompts = _prompts(body.prompt)
    timeout = state.config.request_timeout_s
    rid, created = new_id("cmpl"), now()
    ticket = state.admission.acquire()
    if body.stream:
        return EventStreamAnswer(
            _completion_events(model, prompts, kwargs, timeout, body, rid, created), ticket
        )

    async def compute() -> dict:
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            stream = model.astream(prompt, timeout=timeout, **kwargs)
            try:
                result = await stream.aresult()
            finally:
                await stream.aclose()
            choices.append(completion_choice(index, result.text, finish_reason(result)))
            prompt_tokens += result.usage.prompt_tokens
            completion_tokens += result.usage.completion_tokens
        return completion_body(rid, created, body.model, choices, {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })

    return JSONAnswer(compute, ticket)
