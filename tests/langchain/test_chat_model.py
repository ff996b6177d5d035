"""ChatRKLLM on the demo model: what the standard suites do not check."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages

from langchain_rkllm import ChatRKLLM

from .conftest import DEMO_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("demo_model")]


def chat(**kwargs: Any) -> ChatRKLLM:
    return ChatRKLLM(model=DEMO_MODEL, **{"temperature": 0, "max_tokens": 8, **kwargs})


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_callbacks_see_every_token_and_usage_is_real(demo_model: Any) -> None:
    recorder = TokenRecorder()
    msg = chat().invoke("Name a colour.", config={"callbacks": [recorder]})
    assert "".join(recorder.tokens) == msg.content
    usage = msg.usage_metadata
    assert usage is not None and 0 < usage["output_tokens"] <= 8
    assert len(recorder.tokens) <= usage["output_tokens"]  # one callback per token at most
    expected_prompt = demo_model.count_tokens([{"role": "user", "content": "Name a colour."}])
    assert usage["input_tokens"] == expected_prompt
    meta = msg.response_metadata
    assert meta["model_name"] == DEMO_MODEL and meta["finish_reason"] in ("stop", "length")
    assert meta["decode_tokens"] == usage["output_tokens"] and meta["prefill_ms"] > 0


def test_per_call_sampling_overrides() -> None:
    msg = chat(max_tokens=20).invoke("Count from one to twenty in words.", max_tokens=3)
    assert msg.usage_metadata and msg.usage_metadata["output_tokens"] == 3
    assert msg.response_metadata["finish_reason"] == "length"
    with pytest.raises(TypeError, match="unexpected call argument"):
        chat().invoke("hi", temprature=0.5)


def test_stop_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="both at construction"):
        chat(stop=["."]).invoke("hi", stop=["!"])


def test_stop_sequence_spanning_token_boundaries() -> None:
    llm = chat(max_tokens=16)
    question = "Write one sentence about rivers."
    pieces = [c.content for c in llm.stream(question) if c.content]
    full = "".join(pieces)
    # A stop string made of the end of one token and the start of the next one.
    boundary = next(
        i for i in range(1, len(pieces) - 1)
        if len(pieces[i - 1].strip()) >= 2 and len(pieces[i].strip()) >= 2
    )
    stop = pieces[boundary - 1][-2:] + pieces[boundary][:2]
    expected = full[: full.index(stop)]
    msg = llm.invoke(question, stop=[stop])
    assert msg.content == expected
    assert stop not in msg.content
    streamed = "".join(c.content for c in llm.stream(question, stop=[stop]))
    assert streamed == expected  # the held-back prefix of the stop string never leaks


def test_batch_of_eight_each_gets_its_own_answer() -> None:
    llm = chat(max_tokens=4)
    prompts = [f"Repeat this word: {w}" for w in
               ("river", "bridge", "lantern", "kelp", "heron", "clock", "market", "comet")]
    expected = [llm.invoke(p).content for p in prompts]  # greedy: deterministic per prompt
    got = llm.batch(prompts, config={"max_concurrency": 8})
    assert [m.content for m in got] == expected
    assert len(set(expected)) > 1  # the prompts really lead to different answers


async def test_async_does_not_block_the_event_loop() -> None:
    llm = chat(max_tokens=6)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    msg = await llm.ainvoke("Say hello.")
    chunks = [c async for c in llm.astream("Say hello.")]
    stop.set()
    await task
    assert isinstance(msg, AIMessage) and msg.content
    assert "".join(c.content for c in chunks) == msg.content  # type: ignore[misc]
    assert ticks > 20  # the loop kept running while the model generated


def test_threads_share_one_model(demo_model: Any) -> None:
    llms = [chat(), chat(temperature=0.0), chat()]
    clients: list[Any] = []
    threads = [threading.Thread(target=lambda m=m: clients.append(m.client)) for m in llms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c is demo_model for c in clients)


def test_token_counting_and_trim_messages(demo_model: Any) -> None:
    llm = chat()
    assert llm.get_token_ids("hello world") == demo_model.tokenize("hello world")
    history = [SystemMessage("You are terse."), HumanMessage("first question " * 20),
               AIMessage("first answer " * 20), HumanMessage("second question")]
    total = llm.get_num_tokens_from_messages(history)
    assert total == demo_model.count_tokens(
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "first question " * 20},
         {"role": "assistant", "content": "first answer " * 20},
         {"role": "user", "content": "second question"}]
    )
    trimmed = trim_messages(history, max_tokens=total // 2, token_counter=llm,
                            strategy="last", include_system=True)
    assert trimmed[0] == history[0] and trimmed[-1] == history[-1]
    assert llm.get_num_tokens_from_messages(trimmed) <= total // 2


def test_construction_is_lazy_and_validated() -> None:
    llm = ChatRKLLM(model="/nonexistent/model.gguf")  # nothing is loaded yet
    assert llm._loaded is None
    with pytest.raises(ValueError):
        ChatRKLLM(runtime_config={"max_context_len": -1})
    with pytest.raises(ValueError):
        ChatRKLLM(top_p=2.0)
