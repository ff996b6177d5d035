"""The official ``openai`` client against the server (sync, async, streaming, tools, embeddings)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from serve_scripted import ScriptedEngine

from rkllm_core import RKLLMModel
from rkllm_core.serve.runner import BackgroundServer

openai = pytest.importorskip("openai")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_chat_completion_sync(server: BackgroundServer) -> None:
    reply = client(server).chat.completions.create(
        model="scripted", messages=[{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "hello there"}],
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello there"
    assert choice.finish_reason == "stop"
    assert reply.model == "scripted"
    assert reply.id.startswith("chatcmpl-")
    assert reply.usage.completion_tokens == 4  # one token per word
    # the scripted tokenizer has one token per character of the rendered prompt
    assert reply.usage.prompt_tokens == len(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


def test_chat_stream_with_usage_in_last_chunk(server: BackgroundServer) -> None:
    chunks = list(client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "count to 6"}], stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "1 2 3 4 5 6"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 6  # streamed token by token, not collected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(server: BackgroundServer) -> None:
    chunks = list(client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "count to 2"}], stream=True,
    ))
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_max_tokens_and_stop(server: BackgroundServer) -> None:
    api = client(server)
    capped = api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "count to 50"}], max_tokens=5,
    )
    assert capped.choices[0].message.content == "1 2 3 4 5"
    assert capped.choices[0].finish_reason == "length"
    newer = api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "count to 50"}],
        max_completion_tokens=3,
    )
    assert newer.choices[0].message.content == "1 2 3"
    stopped = api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "count to 50"}], stop=[" 4"],
    )
    assert stopped.choices[0].message.content == "1 2 3"
    assert stopped.choices[0].finish_reason == "stop"


def test_sampling_fields_reach_the_core(server: BackgroundServer, engine: ScriptedEngine,
                                        model: RKLLMModel, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    seen: list[dict] = []
    original = model.astream

    def spy(prompt, sampling=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return original(prompt, sampling, **kwargs)

    monkeypatch.setattr(model, "astream", spy)
    client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], temperature=0.3,
        top_p=0.9, seed=7, frequency_penalty=0.5, presence_penalty=0.25, max_tokens=9,
        extra_body={"top_k": 40, "repeat_penalty": 1.2},
    )
    sent = seen[-1]
    assert {k: sent[k] for k in ("temperature", "top_p", "seed", "frequency_penalty",
                                 "presence_penalty", "max_new_tokens", "top_k",
                                 "repeat_penalty")} == {
        "temperature": 0.3, "top_p": 0.9, "seed": 7, "frequency_penalty": 0.5,
        "presence_penalty": 0.25, "max_new_tokens": 9, "top_k": 40, "repeat_penalty": 1.2,
    }


async def test_async_client_concurrent_requests_each_get_their_answer(
    server: BackgroundServer,
) -> None:
    import asyncio

    api = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    words = [f"word{i}" for i in range(6)]
    replies = await asyncio.gather(*[
        api.chat.completions.create(model="scripted",
                                    messages=[{"role": "user", "content": w}])
        for w in words
    ])
    assert [r.choices[0].message.content for r in replies] == [f"You said: {w}" for w in words]
    stream = await api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "count to 4"}], stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream]
    assert "".join(pieces) == "1 2 3 4"
    await api.close()


def test_tools_parsed_by_the_core(server: BackgroundServer) -> None:
    api = client(server)
    reply = api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}'
    assert call.id.startswith("call_")
    # the tool's result goes back in a follow-up turn, with the call as the assistant wrote it
    follow = api.chat.completions.create(
        model="scripted", tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
            {"role": "user", "content": "thanks"},
        ],
    )
    assert follow.choices[0].message.content == "You said: thanks"
    assert follow.choices[0].finish_reason == "stop"


def test_tool_call_streamed_as_deltas_without_markup(server: BackgroundServer) -> None:
    chunks = list(client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL], stream=True,
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "<tool_call>" not in text and text == ""
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_answers_in_text(server: BackgroundServer) -> None:
    reply = client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="none",
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == "You said: weather in Paris?"


def test_text_completions(server: BackgroundServer) -> None:
    api = client(server)
    reply = api.completions.create(model="scripted", prompt="count to 3")
    assert reply.choices[0].text == "1 2 3"
    assert reply.usage.prompt_tokens == len("count to 3")
    assert reply.usage.completion_tokens == 3
    batch = api.completions.create(model="scripted", prompt=["count to 2", "count to 3"])
    assert [c.text for c in batch.choices] == ["1 2", "1 2 3"]
    assert [c.index for c in batch.choices] == [0, 1]
    chunks = list(api.completions.create(model="scripted", prompt="count to 4", stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "1 2 3 4"
    assert chunks[-1].usage.completion_tokens == 4


def test_embeddings_match_the_model_default_strategy(server: BackgroundServer,
                                                     model: RKLLMModel) -> None:
    texts = ["The capital of France is Paris.", "Rivers flow to the sea."]
    api = client(server)
    reply = api.embeddings.create(model="scripted", input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in reply.data], dtype=np.float32)
    want = model.embed(texts)
    assert got.shape == (2, model.embedding_dimension())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.usage.prompt_tokens == sum(len(t) for t in texts)
    as_float = api.embeddings.create(model="scripted", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(as_float.data[0].embedding, want[0], rtol=1e-6, atol=1e-6)
    # queries get the model's retrieval instruction, as embed_query does in the frameworks
    query = api.embeddings.create(model="scripted", input=texts[0],
                                  extra_body={"input_type": "query"}, encoding_format="float")
    np.testing.assert_allclose(query.data[0].embedding,
                               model.embed(texts[0], is_query=True)[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(query.data[0].embedding, want[0])


def test_embeddings_base64_is_little_endian_float32(server: BackgroundServer,
                                                    model: RKLLMModel) -> None:
    import httpx

    answer = httpx.post(server.base_url + "/embeddings", json={
        "model": "scripted", "input": "hello", "encoding_format": "base64"}).json()
    raw = base64.b64decode(answer["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), model.embed("hello")[0])


def test_models_endpoint(server: BackgroundServer) -> None:
    api = client(server)
    listed = api.models.list()
    assert [m.id for m in listed.data] == ["scripted"]
    assert api.models.retrieve("scripted").id == "scripted"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4o")


SEARCH_TOOL = {
    "type": "function",
    "function": {"name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}}, "required": ["query"]}},
}


@pytest.mark.parametrize("tool_choice", [
    "required", {"type": "function", "function": {"name": "get_weather"}},
])
def test_forced_tool_choice_is_prefilled_by_the_core(server: BackgroundServer,
                                                     engine: ScriptedEngine,
                                                     tool_choice: object) -> None:
    # the user does not ask for the weather: only the core's prefill makes the call
    tools = [WEATHER_TOOL] if tool_choice == "required" else [WEATHER_TOOL, SEARCH_TOOL]
    reply = client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hello"}], tools=tools,
        tool_choice=tool_choice,
    )
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}'
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content is None


def test_forced_tool_choice_streamed(server: BackgroundServer) -> None:
    chunks = list(client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hello"}], stream=True,
        tools=[WEATHER_TOOL, SEARCH_TOOL], tool_choice="required",
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city": "Paris"}')]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_json_object_response_format(server: BackgroundServer) -> None:
    import json

    api = client(server)
    reply = api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "say yes"}],
        response_format={"type": "json_object"},
    )
    # the engine would go on chatting after the object: the core stops it once it closes
    assert json.loads(reply.choices[0].message.content) == {"answer": "say yes"}
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "say yes"}], stream=True,
        response_format={"type": "json_object"},
    ))
    assert json.loads(streamed) == {"answer": "say yes"}


def test_json_schema_response_format(server: BackgroundServer) -> None:
    import json

    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    reply = client(server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Paris"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content) == {"city": "Paris"}


def test_openai_parse_helper_with_a_pydantic_model(server: BackgroundServer) -> None:
    from pydantic import BaseModel

    class Place(BaseModel):
        city: str

    parsed = client(server).chat.completions.parse(
        model="scripted", messages=[{"role": "user", "content": "Lyon"}], response_format=Place,
    )
    assert parsed.choices[0].message.parsed == Place(city="Lyon")
