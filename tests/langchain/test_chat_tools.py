"""Tool calls and structured output: how model text becomes AIMessage.tool_calls / objects.

The model output is scripted (a real RKLLMModel over a scripted pure-Python engine yields
fixed token pieces, and the core's reply assembler reads them), so the parsing paths are
tested exactly; the last tests run the same paths on the real demo model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_rkllm import ChatRKLLM
from langchain_rkllm._messages import to_core_messages
from rkllm_core.reply import JsonObjectEnd, MarkupHoldback, object_start

from .conftest import DEMO_MODEL


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


@pytest.fixture()
def scripted_chat(scripted: Any) -> Callable[[list[str]], tuple[ChatRKLLM, Any]]:
    """ChatRKLLM over a real core model whose engine answers with scripted pieces."""

    def make(pieces: list[str]) -> tuple[ChatRKLLM, Any]:
        model, engine = scripted(pieces)
        llm = ChatRKLLM(model="scripted")
        llm._loaded = model
        return llm, engine

    return make


WELL_FORMED = ["Sure", ".", " <tool", "_call>", '\n{"name": "magic_function", ',
               '"arguments": {"input": 3}}', "\n</tool", "_call>"]


def test_well_formed_call_invoke(scripted_chat: Any) -> None:
    llm, _ = scripted_chat(WELL_FORMED)
    msg = llm.bind_tools([magic_function]).invoke("magic_function(3)?")
    assert isinstance(msg, AIMessage)
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("magic_function", {"input": 3})]
    assert msg.tool_calls[0]["id"]
    assert msg.content == "Sure."
    assert msg.invalid_tool_calls == []
    assert msg.response_metadata["finish_reason"] == "tool_calls"


def test_well_formed_call_stream_hides_markup(scripted_chat: Any) -> None:
    llm, _ = scripted_chat(WELL_FORMED)
    chunks = list(llm.bind_tools([magic_function]).stream("magic_function(3)?"))
    text = "".join(c.content for c in chunks if isinstance(c.content, str))
    assert "<tool" not in text and "{" not in text
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("magic_function", {"input": 3})]
    assert full.content == "Sure."


def test_several_calls(scripted_chat: Any) -> None:
    pieces = [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Orlen"}}\n</tool_call>\n',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Caddis"}}\n</tool_call>',
    ]
    llm, _ = scripted_chat(pieces)
    msg = llm.bind_tools([get_weather, magic_function]).invoke("weather in Orlen and Caddis?")
    assert [c["args"]["city"] for c in msg.tool_calls] == ["Orlen", "Caddis"]
    assert len({c["id"] for c in msg.tool_calls}) == 2
    assert msg.content == ""


def test_malformed_json_becomes_invalid_tool_call(scripted_chat: Any) -> None:
    pieces = ['<tool_call>\n{"name": "magic_function", "arguments": {"input": 3}\n', "</tool_call>"]
    llm, _ = scripted_chat(pieces)
    bound = llm.bind_tools([magic_function])
    msg = bound.invoke("magic_function(3)?")
    assert msg.tool_calls == []
    assert len(msg.invalid_tool_calls) == 1
    bad = msg.invalid_tool_calls[0]
    assert "JSON" in (bad["error"] or "")
    assert '"input": 3' in (bad["args"] or "")
    full = None
    for chunk in bound.stream("magic_function(3)?"):  # streaming must not crash either
        full = chunk if full is None else full + chunk
    assert full is not None and full.tool_calls == [] and full.invalid_tool_calls


def test_bare_json_call(scripted_chat: Any) -> None:
    llm, _ = scripted_chat(['{"name": "magic_function",', ' "arguments": {"input": 5}}'])
    msg = llm.bind_tools([magic_function]).invoke("magic_function(5)?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("magic_function", {"input": 5})]


def test_plain_answer_with_tools_bound_streams_as_content(scripted_chat: Any) -> None:
    llm, _ = scripted_chat(["The", " answer", " is", " 5", "."])
    chunks = list(llm.bind_tools([magic_function]).stream("hi"))
    assert "".join(c.content for c in chunks) == "The answer is 5."
    assert sum(1 for c in chunks if c.content) >= 4  # really streamed, not held to the end


def test_forced_tool_choice_prefills_and_stops_at_the_end_of_the_call(scripted_chat: Any) -> None:
    llm, fake = scripted_chat([" 3", "}}", "\n</tool_call> and then", " chatter"])
    msg = llm.bind_tools([magic_function], tool_choice="any").invoke("magic_function(3)?")
    prompt = fake.prompts[-1]
    assert isinstance(prompt, str)
    # Starts the required argument and ends on a token boundary ('":'), never inside the
    # ' {"' token (which made Qwen2.5 write unquoted keys).
    assert prompt.endswith('<tool_call>\n{"name": "magic_function", "arguments": {"input":')
    assert json.loads(prompt.split("\nASSISTANT:")[0])["tools"][0]["function"]["name"] == (
        "magic_function"
    )
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("magic_function", {"input": 3})]


def test_tool_choice_must_name_a_bound_tool() -> None:
    with pytest.raises(ValueError, match="does not name a bound tool"):
        ChatRKLLM().bind_tools([magic_function], tool_choice="nope")


def test_tool_choice_none_sends_no_tools(scripted_chat: Any) -> None:
    llm, fake = scripted_chat(["hello"])
    llm.bind_tools([magic_function], tool_choice="none").invoke("hi")
    prompt = fake.prompts[-1]
    # plain chat messages, no tools and no tool prefill
    assert prompt.endswith("\nASSISTANT:")
    assert json.loads(prompt.split("\nASSISTANT:")[0])["tools"] == []


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_methods(method: str, scripted_chat: Any) -> None:
    tail = "}" if method != "function_calling" else "}}"
    # json_mode knows no keys: the answer starts '{"'; with a schema the first required
    # key is written for the model (it otherwise tends to echo the schema back).
    head = 'setup":' if method == "json_mode" else ""
    pieces = [head + ' "Why', '?", "punchline": "Because."', tail, " extra words"]
    llm, fake = scripted_chat(pieces)
    joke = llm.with_structured_output(Joke, method=method).invoke("a joke")  # type: ignore[arg-type]
    assert joke == Joke(setup="Why?", punchline="Because.")
    prompt = fake.prompts[-1]
    if method == "json_schema":
        assert "punchline" in prompt and prompt.endswith('{"setup":')
    if method == "json_mode":
        assert "punchline" not in prompt and prompt.endswith('{"')
    if method == "function_calling":
        assert prompt.endswith('"arguments": {"setup":')


@tool
def no_args() -> str:
    """Takes nothing."""
    return "x"


def test_forced_call_of_a_tool_without_parameters_needs_no_generation(scripted_chat: Any) -> None:
    # The model has nothing to fill in; whatever it writes next is not part of the call.
    llm, fake = scripted_chat(['{"properties": {}}}', "\n</tool_call>"])
    msg = llm.bind_tools([no_args], tool_choice="any").invoke("call it")
    assert fake.prompts[-1].endswith('"arguments": {}}')
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("no_args", {})]


def test_broken_forced_call_keeps_the_forced_name(scripted_chat: Any) -> None:
    llm, _ = scripted_chat([' {type: "integer"}}}'])  # what SmolLM2-135M writes here
    msg = llm.bind_tools([magic_function], tool_choice="any").invoke("magic_function(3)?")
    assert msg.tool_calls == []
    assert [c["name"] for c in msg.invalid_tool_calls] == ["magic_function"]


def test_object_start() -> None:
    schema = {"properties": {"a": {}, "b": {}}, "required": ["b"]}
    assert object_start(schema) == '{"b":'
    assert object_start({"type": "object", "properties": {}}) == "{}"
    assert object_start({"properties": {"a": {}}}) is None  # nothing required
    assert object_start(None) is None


def test_structured_output_dict_schema_include_raw(scripted_chat: Any) -> None:
    llm, _ = scripted_chat([' "a", "punchline": "b"}'])  # after the prefilled '{"setup":'
    chain = llm.with_structured_output(Joke.model_json_schema(), include_raw=True)
    out = chain.invoke("a joke")
    assert out["parsed"] == {"setup": "a", "punchline": "b"}
    assert isinstance(out["raw"], AIMessage) and out["parsing_error"] is None


def test_history_with_tool_calls_converts() -> None:
    history = [
        HumanMessage("magic_function(3)?"),
        AIMessage("", tool_calls=[{"name": "magic_function", "args": {"input": 3}, "id": "c1"}]),
        ToolMessage("5", tool_call_id="c1"),
    ]
    core = to_core_messages(history)
    assert core[1]["tool_calls"] == [{"id": "c1", "name": "magic_function",
                                      "arguments": {"input": 3}}]
    assert core[2] == {"role": "tool", "content": "5", "tool_call_id": "c1"}
    with pytest.raises(ValueError, match="text only"):
        to_core_messages([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])


def test_scanners() -> None:
    end = JsonObjectEnd()
    assert end.feed('<tool_call>\n{"a": "}{", "b": [1, {"c": 2}]') == -1
    assert end.feed("} tail") == 1
    hold = MarkupHoldback()
    assert hold.push("Hi <to") == "Hi"
    assert hold.push("ol_call>{") == ""
    assert hold.holding


# --- the same paths on the real demo model ------------------------------------------------


@pytest.mark.integration
def test_forced_tool_call_on_demo_model(demo_model: object) -> None:
    llm = ChatRKLLM(model=DEMO_MODEL, temperature=0, max_tokens=24)
    msg = llm.bind_tools([magic_function], tool_choice="any").invoke(
        "What is the value of magic_function(3)? Use the tool."
    )
    # The prefill fixes the tool name; a 135M model may still write bad arguments, which
    # must come back as an invalid_tool_calls entry, never as an exception.
    calls = msg.tool_calls + msg.invalid_tool_calls
    assert len(calls) == 1
    assert calls[0]["name"] == "magic_function"
    assert msg.usage_metadata and msg.usage_metadata["output_tokens"] <= 24


@pytest.mark.integration
def test_json_mode_on_demo_model_returns_an_object(demo_model: object) -> None:
    llm = ChatRKLLM(model=DEMO_MODEL, temperature=0, max_tokens=40)
    msg = llm.bind(response_format={"type": "json_object"}).invoke(
        "Describe a cat as JSON with keys 'name' and 'colour'."
    )
    assert msg.content.startswith("{")  # type: ignore[union-attr]
    if msg.response_metadata["finish_reason"] == "stop":  # closed: must be whole JSON
        assert isinstance(json.loads(msg.content), dict)  # type: ignore[arg-type]
