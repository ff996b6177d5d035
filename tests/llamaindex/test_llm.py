"""Conformance of ``RKLLM`` to LlamaIndex's LLM interface, on the SmolLM2 demo model.

The model decodes greedily by default, so a sync, a streamed and an async call with the same
input must produce the same text: most tests compare the interface's paths with each other
and with the core model directly, rather than with hard-coded strings.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
)
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import LLM

from llamaindex_rkllm import RKLLM

from .conftest import MAX_TOKENS

pytestmark = pytest.mark.integration

PROMPT = "What is the capital of France?"
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread."
MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="You are a concise assistant."),
    ChatMessage(role=MessageRole.USER, content="Name three colours."),
]
CORE_MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three colours."},
]


@pytest.fixture(scope="module")
def reference(llm: RKLLM) -> dict[str, Any]:
    """Greedy answers computed by the core model itself, from prompts rendered by hand."""
    core = llm.core_model
    completion_prompt = core.render_chat([{"role": "user", "content": PROMPT}])
    chat_prompt = core.render_chat(CORE_MESSAGES)
    assert "You are a concise assistant." in chat_prompt
    return {
        "complete": core.generate(completion_prompt, max_new_tokens=MAX_TOKENS),
        "complete_prompt_tokens": len(core.tokenize(completion_prompt)),
        "chat": core.generate(chat_prompt, max_new_tokens=MAX_TOKENS),
        "chat_prompt_tokens": len(core.tokenize(chat_prompt)),
    }


def _usage_ok(extra: dict[str, Any], limit: int = MAX_TOKENS) -> None:
    assert extra["prompt_tokens"] > 0
    assert 0 < extra["completion_tokens"] <= limit
    assert extra["total_tokens"] == extra["prompt_tokens"] + extra["completion_tokens"]


# --- metadata ---------------------------------------------------------------------------------


def test_is_a_function_calling_llm(llm: RKLLM) -> None:
    from llama_index.core.llms.function_calling import FunctionCallingLLM

    assert isinstance(llm, LLM)
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.class_name() == "RKLLM_llm"


def test_metadata_is_the_models(llm: RKLLM) -> None:
    meta = llm.metadata
    info, config = llm.core_model.info, llm.core_model.config
    assert info.context_length, "the demo model declares its trained context"
    assert meta.context_window == min(config.max_context_len, info.context_length)
    assert meta.num_output == MAX_TOKENS
    assert meta.is_chat_model is True
    assert meta.model_name == info.model_name
    assert "SmolLM2" in meta.model_name
    # SmolLM2's chat template has no tools section: claiming function calling would be a lie
    assert meta.is_function_calling_model is llm.core_model.renderer.supports_tools is False
    assert meta.system_role == MessageRole.SYSTEM


def test_num_output_defaults_to_runtime_config(llm: RKLLM) -> None:
    other = RKLLM(model=llm.core_model)
    assert other.core_model is llm.core_model  # no second load
    assert other.metadata.num_output == llm.core_model.config.max_new_tokens


def test_bad_defaults_fail_at_construction(llm: RKLLM) -> None:
    with pytest.raises(ValueError):
        RKLLM(model=llm.core_model, temperature=-1.0)
    with pytest.raises(ValueError, match="typo_field"):
        RKLLM(model=llm.core_model, generate_kwargs={"typo_field": 1})


# --- the four sync methods ----------------------------------------------------------------


def test_complete(llm: RKLLM, reference: dict[str, Any]) -> None:
    response = llm.complete(PROMPT)
    assert isinstance(response, CompletionResponse)
    assert response.text.strip()
    _usage_ok(response.additional_kwargs)
    assert response.raw["usage"] == response.additional_kwargs
    assert response.raw["finish_reason"] in ("stop", "length")
    assert response.raw["model"] == llm.metadata.model_name
    # the prompt went through the model's own chat template as one user turn
    assert response.text == reference["complete"].text
    assert response.additional_kwargs["prompt_tokens"] == reference["complete_prompt_tokens"]


def test_complete_formatted_is_sent_raw(llm: RKLLM) -> None:
    raw_prompt = "The three primary colours are"
    response = llm.complete(raw_prompt, formatted=True)
    expected = llm.core_model.generate(raw_prompt, max_new_tokens=MAX_TOKENS)
    assert response.text == expected.text
    assert response.additional_kwargs["prompt_tokens"] == len(llm.core_model.tokenize(raw_prompt))


def test_stream_complete(llm: RKLLM, reference: dict[str, Any]) -> None:
    chunks = list(llm.stream_complete(PROMPT))
    assert len(chunks) > 2
    deltas = "".join(c.delta or "" for c in chunks)
    final = chunks[-1]
    assert final.delta == "" and deltas == final.text
    for earlier, later in itertools.pairwise(chunks):
        assert later.text.startswith(earlier.text)  # text is the running total
    _usage_ok(final.additional_kwargs)
    assert final.text == reference["complete"].text


def test_chat_uses_the_models_template(llm: RKLLM, reference: dict[str, Any]) -> None:
    response = llm.chat(MESSAGES)
    assert isinstance(response, ChatResponse)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content
    _usage_ok(response.additional_kwargs)
    assert response.message.content == reference["chat"].text
    assert response.additional_kwargs["prompt_tokens"] == reference["chat_prompt_tokens"]


def test_stream_chat(llm: RKLLM, reference: dict[str, Any]) -> None:
    chunks = list(llm.stream_chat(MESSAGES))
    assert len(chunks) > 2
    final = chunks[-1]
    assert final.delta == ""
    assert "".join(c.delta or "" for c in chunks) == final.message.content
    assert all(c.message.role == MessageRole.ASSISTANT for c in chunks)
    _usage_ok(final.additional_kwargs)
    assert final.raw["usage"]["completion_tokens"] == final.additional_kwargs["completion_tokens"]
    assert final.message.content == reference["chat"].text


# --- the four async methods -----------------------------------------------------------------


async def test_acomplete(llm: RKLLM, reference: dict[str, Any]) -> None:
    response = await llm.acomplete(PROMPT)
    assert response.text == reference["complete"].text
    _usage_ok(response.additional_kwargs)


async def test_astream_complete(llm: RKLLM, reference: dict[str, Any]) -> None:
    chunks = [c async for c in await llm.astream_complete(PROMPT)]
    assert len(chunks) > 2
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].text
    assert chunks[-1].text == reference["complete"].text
    _usage_ok(chunks[-1].additional_kwargs)


async def test_achat(llm: RKLLM, reference: dict[str, Any]) -> None:
    response = await llm.achat(MESSAGES)
    assert response.message.content == reference["chat"].text
    _usage_ok(response.additional_kwargs)


async def test_astream_chat(llm: RKLLM, reference: dict[str, Any]) -> None:
    chunks = [c async for c in await llm.astream_chat(MESSAGES)]
    assert len(chunks) > 2
    final = chunks[-1]
    assert "".join(c.delta or "" for c in chunks) == final.message.content
    assert final.message.content == reference["chat"].text
    _usage_ok(final.additional_kwargs)


async def test_async_methods_do_not_block_the_event_loop(llm: RKLLM) -> None:
    """A ticker task keeps running while the model generates (no blocking call on the loop)."""
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    response = await llm.achat(MESSAGES, max_tokens=4)
    chunks = [c async for c in await llm.astream_complete(PROMPT, max_tokens=4)]
    elapsed = time.perf_counter() - start
    task.cancel()
    during = [t for t in ticks if t >= start]
    assert response.message.content and chunks
    # a blocking call would freeze the ticker for the whole generation (seconds here)
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) > 10, f"only {len(during)} ticks in {elapsed:.2f}s of generation"
    assert max(gaps) < max(0.5, elapsed / 4)


async def test_concurrent_async_calls_get_their_own_answers(
    llm: RKLLM, reference: dict[str, Any]
) -> None:
    a, b = await asyncio.gather(llm.acomplete(PROMPT), llm.achat(MESSAGES))
    assert a.text == reference["complete"].text
    assert b.message.content == reference["chat"].text


# --- kwargs reach the model ---------------------------------------------------------------


def test_max_tokens_limits_completion(llm: RKLLM) -> None:
    response = llm.complete(LONG_PROMPT, max_tokens=3)
    assert response.additional_kwargs["completion_tokens"] == 3
    assert response.raw["finish_reason"] == "length"
    # the alias and the instance default give the same cap
    assert llm.complete(LONG_PROMPT, max_new_tokens=3).text == response.text
    capped = RKLLM(model=llm.core_model, max_new_tokens=3)
    assert capped.complete(LONG_PROMPT).text == response.text


def test_stop_string_cuts_the_output(llm: RKLLM) -> None:
    full = llm.complete(LONG_PROMPT, max_tokens=10).text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]
    cut = llm.complete(LONG_PROMPT, max_tokens=10, stop=[stop])
    assert cut.text == full[: full.index(stop)]
    assert stop not in cut.text
    assert cut.raw["finish_reason"] == "stop"
    streamed = list(llm.stream_complete(LONG_PROMPT, max_tokens=10, stop=[stop]))
    assert streamed[-1].text == cut.text


def test_temperature_and_seed(llm: RKLLM) -> None:
    sampled = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "max_tokens": 5}
    first = llm.complete(LONG_PROMPT, seed=11, **sampled).text
    again = llm.complete(LONG_PROMPT, seed=11, **sampled).text
    assert first == again  # same seed, same sample
    # hot sampling over the whole vocabulary: other seeds take other paths
    others = {llm.complete(LONG_PROMPT, seed=s, **sampled).text for s in (1, 2)}
    assert len(others | {first}) > 1


def test_unknown_kwarg_is_an_error_not_ignored(llm: RKLLM) -> None:
    with pytest.raises(ValueError, match="frobnicate"):
        llm.complete(PROMPT, frobnicate=True)
    with pytest.raises(ValueError):
        llm.chat(MESSAGES, temperature=-2.0)


async def test_async_kwargs_reach_the_model(llm: RKLLM) -> None:
    response = await llm.achat(MESSAGES, max_tokens=2)
    assert response.additional_kwargs["completion_tokens"] == 2
    chunks = [c async for c in await llm.astream_chat(MESSAGES, max_tokens=2)]
    assert chunks[-1].additional_kwargs["completion_tokens"] == 2


def test_system_prompt_goes_into_completions(llm: RKLLM) -> None:
    system = "Always answer in French."
    with_system = RKLLM(model=llm.core_model, max_new_tokens=MAX_TOKENS, system_prompt=system)
    response = with_system.complete(PROMPT)
    rendered = llm.core_model.render_chat(
        [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}]
    )
    assert response.text == llm.core_model.generate(rendered, max_new_tokens=MAX_TOKENS).text


def test_user_messages_to_prompt_is_respected(llm: RKLLM) -> None:
    seen: list[int] = []

    def to_prompt(messages: Any) -> str:
        seen.append(len(messages))
        return "\n".join(f"{m.role.value}: {m.content}" for m in messages) + "\nassistant:"

    custom = RKLLM(model=llm.core_model, max_new_tokens=6, messages_to_prompt=to_prompt)
    response = custom.chat(MESSAGES)
    assert seen == [2]
    expected = llm.core_model.generate(to_prompt(MESSAGES), max_new_tokens=6)
    assert response.message.content == expected.text


def test_token_counting_handler_reads_usage(llm: RKLLM) -> None:
    counter = TokenCountingHandler(tokenizer=lambda text: llm.core_model.tokenize(text))
    counted = RKLLM(model=llm.core_model, max_new_tokens=4)
    counted.callback_manager = CallbackManager([counter])
    response = counted.complete(PROMPT)
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"]
    assert counter.completion_llm_token_count == response.additional_kwargs["completion_tokens"]


# --- cancellation -------------------------------------------------------------------------


class _StreamSpy:
    """Records the core streams the LLM opens, to check how they ended."""

    def __init__(self, model: Any, name: str) -> None:
        self.streams: list[Any] = []
        self._original = getattr(model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        stream = self._original(*args, **kwargs)
        self.streams.append(stream)
        return stream


def test_closing_a_sync_stream_cancels_the_request(
    llm: RKLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _StreamSpy(llm.core_model, "stream")
    monkeypatch.setattr(llm.core_model, "stream", spy)
    gen = llm.stream_complete(LONG_PROMPT, max_tokens=200)
    received = [next(gen).delta for _ in range(2)]
    gen.close()
    assert len(received) == 2
    (stream,) = spy.streams
    result = stream.result  # the rest of the stream, up to its end
    assert result.finish_reason == "abort"
    assert result.usage.completion_tokens < 50
    # the model is free at once for the next request
    monkeypatch.undo()
    assert llm.complete(PROMPT, max_tokens=2).additional_kwargs["completion_tokens"] == 2


def test_breaking_out_of_stream_chat_cancels_the_request(
    llm: RKLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _StreamSpy(llm.core_model, "stream")
    monkeypatch.setattr(llm.core_model, "stream", spy)
    for _chunk in llm.stream_chat([ChatMessage(role="user", content=LONG_PROMPT)], max_tokens=200):
        break  # dropping the generator is enough: no explicit close
    (stream,) = spy.streams
    assert stream.result.finish_reason == "abort"
    assert stream.result.usage.completion_tokens < 50


async def test_cancelling_an_async_stream_task_cancels_the_request(
    llm: RKLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _StreamSpy(llm.core_model, "astream")
    monkeypatch.setattr(llm.core_model, "astream", spy)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in await llm.astream_chat(MESSAGES, max_tokens=200):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (stream,) = spy.streams
    result = await asyncio.wait_for(stream.aresult(), timeout=60)
    assert result.finish_reason == "abort"
    assert result.usage.completion_tokens < 50


async def test_aclose_of_an_async_stream_cancels_the_request(
    llm: RKLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _StreamSpy(llm.core_model, "astream")
    monkeypatch.setattr(llm.core_model, "astream", spy)
    gen = await llm.astream_complete(LONG_PROMPT, max_tokens=200)
    assert (await gen.__anext__()).delta
    await gen.aclose()
    # the inner generator is closed by the loop's async-generator finaliser; give it a turn
    (stream,) = spy.streams
    result = await asyncio.wait_for(stream.aresult(), timeout=60)
    assert result.finish_reason == "abort"
    assert result.usage.completion_tokens < 50
    monkeypatch.undo()
    assert (await llm.acomplete(PROMPT, max_tokens=2)).additional_kwargs["completion_tokens"] == 2
