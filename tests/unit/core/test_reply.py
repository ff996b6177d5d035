"""The reply, decided in the core: tool calls, forced calls, JSON answers, deadlines.

A real RKLLMModel runs over the scripted pure-Python engine (tests/scripted_engine.py), so the
queue, the stop matcher and the reply assembler are the product's; only the words are fixed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from scripted_engine import PLAIN_TEMPLATE

from rkllm_core import ConfigError, RequestTimeoutError, parse_tool_calls
from rkllm_core.reply import object_start, plan_reply

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
MULTIPLY = {
    "type": "function",
    "function": {
        "name": "multiply",
        "parameters": {"type": "object", "properties": {"x": {}}, "required": ["x"]},
    },
}
USER = [{"role": "user", "content": "What is 3 plus 4?"}]


def test_bare_json_call_is_held_back_while_streaming_and_parsed(scripted: Any) -> None:
    model, _ = scripted(['{"name": "add", ', '"arguments": {"a": 3, "b": 4}}'])
    stream = model.stream(USER, tools=[ADD])
    assert [c.text for c in stream] == []  # never streamed as answer text
    result = stream.result
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("add", {"a": 3, "b": 4})]
    assert result.content == "" and result.finish_reason == "tool_calls"


def test_json_that_is_not_a_call_stays_content_and_streams_at_the_end(scripted: Any) -> None:
    # Qwen2.5 answering a tool result: the call echoed, then the answer, untagged.
    text = '{"name": "multiply", "arguments": {"x": 3}}\n{"response": "888"}'
    model, _ = scripted([text[:20], text[20:]])
    stream = model.stream(USER, tools=[ADD, MULTIPLY])
    chunks = [c.text for c in stream]
    result = stream.result
    assert result.content == text and "".join(chunks) == text
    assert result.tool_calls == () and result.invalid_tool_calls == ()
    assert result.finish_reason == "stop"


def test_several_bare_calls_are_several_calls() -> None:
    text = (
        '{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
        '{"name": "multiply", "arguments": {"x": 3}}'
    )
    content, calls, invalid = parse_tool_calls(text, tools=["add", "multiply"])
    assert (content, [c.name for c in calls], invalid) == ("", ["add", "multiply"], [])
    # broken JSON without the tags was never announced as a call: it is text
    broken = '{"name": "add", "arguments": {"a": 1,'
    assert parse_tool_calls(broken, tools=["add"]) == (broken, [], [])
    # data that happens to have a "name" key is not a call of an unbound tool
    person = '{"name": "Ada Lovelace", "age": 36}'
    assert parse_tool_calls(person, tools=["add"]) == (person, [], [])


def test_tools_are_listed_once_for_a_template_without_tools(scripted: Any) -> None:
    model, engine = scripted(["ok"], chat_template=PLAIN_TEMPLATE)
    model.generate(USER, tools=[ADD, MULTIPLY])
    prompt = engine.prompts[-1]
    assert prompt.count('"name": "add"') == 1 and prompt.count('"name": "multiply"') == 1
    assert prompt.startswith("<|im_start|>system\n")


def test_forced_any_naming_an_unbound_tool_is_invalid(scripted: Any) -> None:
    model, engine = scripted(['Acme Corp.", "arguments": {}}'])
    result = model.generate(USER, tools=[ADD, MULTIPLY], tool_choice="any")
    assert engine.prompts[-1].endswith('<tool_call>\n{"name": "')
    assert result.tool_calls == ()
    (bad,) = result.invalid_tool_calls
    assert bad.name == "Acme Corp." and "not one of the bound tools" in bad.error


def test_forced_named_call_is_prefilled_and_stops_when_whole(scripted: Any) -> None:
    model, engine = scripted([" 3", ', "b": 4}}', "\n</tool_call> and", " chatter"])
    result = model.generate(USER, tools=[ADD, MULTIPLY], tool_choice="add")
    assert engine.prompts[-1].endswith('<tool_call>\n{"name": "add", "arguments": {"a":')
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("add", {"a": 3, "b": 4})]
    assert result.usage.completion_tokens == 2  # stopped as soon as the call closed
    assert result.finish_reason == "tool_calls"


def test_tool_choice_spellings() -> None:
    assert plan_reply([ADD], "required").forced_name == "add"
    assert plan_reply([ADD, MULTIPLY], True).prefill.endswith('{"name": "')
    named = {"type": "function", "function": {"name": "multiply"}}
    assert plan_reply([ADD, MULTIPLY], named).forced_name == "multiply"
    assert plan_reply([ADD], "none").mode == "plain"
    with pytest.raises(ConfigError, match="does not name a bound tool"):
        plan_reply([ADD], "nope")
    with pytest.raises(ConfigError, match="without tools"):
        plan_reply(None, "any")
    with pytest.raises(ConfigError, match="cannot both"):
        plan_reply([ADD], "add", {"type": "json_object"})


def test_json_schema_prefill_never_starts_like_a_schema() -> None:
    # a 'title' key first made Qwen2.5 write the JSON schema itself (2 of 2 tries)
    book = {"properties": {"title": {"type": "string"}, "author": {"type": "string"}},
            "required": ["title", "author"]}
    assert object_start(book) == '{"author":'
    only_title = {"properties": {"title": {"type": "string"}}, "required": ["title"]}
    assert object_start(only_title) == '{"title": "'  # inside a string value: no schema fits
    typed = {"properties": {"type": {"type": "integer"}}, "required": ["type"]}
    assert object_start(typed) is None


def test_json_answer_streams_with_its_prefill_and_stops_at_the_close(scripted: Any) -> None:
    model, engine = scripted([' "Ada",', ' "age": 36}', " and more"])
    schema = {"type": "object", "properties": {"name": {}, "age": {}}, "required": ["name"]}
    stream = model.stream(USER, response_format={"type": "json_schema", "schema": schema})
    streamed = "".join(c.text for c in stream)
    result = stream.result
    assert streamed == result.content == '{"name": "Ada", "age": 36}'
    assert json.loads(result.content) == {"name": "Ada", "age": 36}
    assert "conforms to this JSON schema" in engine.prompts[-1]
    openai_form = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    assert model.generate(USER, response_format=openai_form).content.startswith('{"name":')


# --- deadlines ------------------------------------------------------------------------------


def test_a_request_whose_deadline_passed_in_the_queue_never_runs(scripted: Any) -> None:
    model, engine = scripted(["a"] * 10, token_s=0.3)
    first = model.stream("slow")  # runs ~3 s
    start = time.monotonic()
    with pytest.raises(RequestTimeoutError, match=r"timeout=0\.1"):
        model.generate("late", timeout=0.1)
    assert time.monotonic() - start < 2.0  # failed at its deadline, not at its turn (3 s)
    assert first.result.text == "a" * 10
    model.generate("after", max_new_tokens=1)
    assert engine.prompts == ["slow", "after"]  # the late request never reached the engine


def test_a_prefill_that_outlives_the_deadline_is_stopped(scripted: Any) -> None:
    model, engine = scripted(["a"], prefill_s=5.0)
    start = time.monotonic()
    with pytest.raises(TimeoutError):  # RequestTimeoutError is a TimeoutError
        model.generate("long prompt", timeout=0.3)
    assert time.monotonic() - start < 4.0  # not after the whole 5 s prefill
    engine.prefill_s = 0.0
    assert model.generate("next").text == "a"  # the model is free again


async def test_async_deadline(scripted: Any) -> None:
    model, _ = scripted(["a", "b", "c"], token_s=0.3)
    with pytest.raises(RequestTimeoutError):
        await model.agenerate("x", timeout=0.4)


def test_many_queued_callers_with_a_timeout_fail_on_time(scripted: Any) -> None:
    model, engine = scripted(["x"] * 10, token_s=0.3)  # ~3 s per request
    start = time.monotonic()
    busy = model.stream("busy")  # no deadline: holds the model for ~3 s
    waiting = [model.stream(f"q{i}", timeout=0.5) for i in range(9)]
    failed_at: list[float] = []
    for stream in waiting:
        with pytest.raises(RequestTimeoutError):
            _ = stream.result
        failed_at.append(time.monotonic() - start)
    assert max(failed_at) < 2.5  # at their deadline, not when their turn came (3 s, 6 s …)
    assert busy.result.text == "x" * 10
    assert engine.prompts == ["busy"]  # no prompt ran after its caller gave up


def test_bad_timeout_is_refused(scripted: Any) -> None:
    model, _ = scripted(["a"])
    with pytest.raises(ConfigError, match="timeout"):
        model.generate("x", timeout=0)


# --- the model layer over the fake engine -------------------------------------------------


def test_queue_order_abort_and_close(scripted: Any) -> None:
    model, engine = scripted(["1", "2", "3", "4"], token_s=0.05)
    streams = [model.stream(f"p{i}") for i in range(3)]
    streams[1].abort()  # cancelled while queued: skipped
    assert streams[0].result.text == "1234"
    assert streams[1].result.finish_reason == "abort"
    assert streams[2].result.text == "1234"
    assert engine.prompts == ["p0", "p2"]
    running = model.stream("p3")
    next(iter(running))
    running.close()
    assert running.result.finish_reason == "abort"
    model.close()
    model.close()  # idempotent
    assert engine.closed


async def test_async_streams_queue_in_order(scripted: Any) -> None:
    model, _ = scripted(["a"], ["b"], ["c"])
    results = await asyncio.gather(*(model.agenerate(f"p{i}") for i in range(3)))
    assert [r.text for r in results] == ["a", "b", "c"]


def test_sampling_merge_has_one_alias() -> None:
    from rkllm_core import SamplingParams

    merged = SamplingParams.merge({"max_tokens": 5, "temperature": 0.1}, {"temperature": None})
    assert merged.max_new_tokens == 5 and merged.temperature == 0.1
    with pytest.raises(ConfigError, match="frobnicate"):
        SamplingParams.merge({"frobnicate": 1})
    with pytest.raises(ConfigError, match="same setting"):
        SamplingParams.merge({"max_tokens": 5, "max_new_tokens": 6})
