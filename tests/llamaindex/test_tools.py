"""Function calling: tools reach the core, tool calls come back as LlamaIndex objects.

SmolLM2-135M does not call tools, so the adapter's logic is tested with the model's
``generate`` replaced by a scripted answer (parsed by the core's real tool-call parser);
``RKLLM_TEST_TOOL_MODEL=qwen2.5-coder-0.5b`` adds an end-to-end run on a model whose chat
template has tools (slow: about two minutes on two shared cores).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.tools import FunctionTool

from llamaindex_rkllm import RKLLM
from llamaindex_rkllm.llms import to_core_message
from rkllm_core import GenerationResult, PerfStats, Usage, parse_tool_calls

pytestmark = pytest.mark.integration


def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


def weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


TOOLS = [FunctionTool.from_defaults(add), FunctionTool.from_defaults(weather)]
CALL_ADD = '<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>'
CALL_WEATHER = '<tool_call>{"name": "weather", "arguments": {"city": "Orlen"}}</tool_call>'


class ScriptedGenerate:
    """Stands in for ``RKLLMModel.generate``: records the request, answers a scripted text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, prompt: Any, **kwargs: Any) -> GenerationResult:
        self.calls.append((prompt, kwargs))
        content, calls, invalid = (self.text, [], [])
        if kwargs.get("tools"):
            content, calls, invalid = parse_tool_calls(self.text)
        return GenerationResult(
            text=self.text,
            token_ids=(),
            finish_reason="stop",
            usage=Usage(20, 10),
            perf=PerfStats(),
            model="scripted",
            tool_calls=tuple(calls),
            invalid_tool_calls=tuple(invalid),
            content=content,
        )


@pytest.fixture()
def scripted(llm: RKLLM, monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(text: str) -> ScriptedGenerate:
        fake = ScriptedGenerate(text)
        monkeypatch.setattr(llm.core_model, "generate", fake)
        return fake

    return install


def test_tools_reach_the_core_and_calls_come_back(llm: RKLLM, scripted: Any) -> None:
    fake = scripted(CALL_ADD)
    response = llm.chat_with_tools(TOOLS, user_msg="What is 3 plus 4?")
    prompt, kwargs = fake.calls[0]
    names = [t["function"]["name"] for t in kwargs["tools"]]
    assert names == ["add", "weather"]
    assert kwargs["tools"][0]["function"]["parameters"]["properties"].keys() == {"a", "b"}
    # SmolLM2's template cannot render tools: they are described in a system message instead
    assert prompt[0]["role"] == "system" and '"add"' in prompt[0]["content"]
    assert prompt[-1] == {"role": "user", "content": "What is 3 plus 4?"}
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "add"
    assert selection.tool_kwargs == {"a": 3, "b": 4}
    assert selection.tool_id.startswith("call_")
    assert response.message.content is None  # the markup is not left in the text
    assert response.additional_kwargs["total_tokens"] == 30


def test_parallel_calls_are_kept_only_when_allowed(llm: RKLLM, scripted: Any) -> None:
    scripted(CALL_ADD + "\n" + CALL_WEATHER)
    single = llm.chat_with_tools(TOOLS, user_msg="Add 3 and 4, and the weather in Orlen")
    assert [s.tool_name for s in llm.get_tool_calls_from_response(single)] == ["add"]
    both = llm.chat_with_tools(TOOLS, user_msg="…", allow_parallel_tool_calls=True)
    assert [s.tool_name for s in llm.get_tool_calls_from_response(both)] == ["add", "weather"]


def test_no_tool_call(llm: RKLLM, scripted: Any) -> None:
    scripted("I do not need a tool for that.")
    response = llm.chat_with_tools(TOOLS, user_msg="Hello")
    assert response.message.content == "I do not need a tool for that."
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(response)


def test_unparsable_call_is_reported(llm: RKLLM, scripted: Any) -> None:
    scripted('<tool_call>{"name": "add", "arguments": {"a": 3,</tool_call>')
    response = llm.chat_with_tools(TOOLS, user_msg="What is 3 plus 4?")
    assert response.additional_kwargs["invalid_tool_calls"]
    with pytest.raises(ValueError, match="unparsable"):
        llm.get_tool_calls_from_response(response)


def test_tool_choice_and_tool_required(llm: RKLLM, scripted: Any) -> None:
    fake = scripted(CALL_WEATHER)
    llm.chat_with_tools(TOOLS, user_msg="Weather?", tool_choice="weather")
    prompt, kwargs = fake.calls[-1]
    assert [t["function"]["name"] for t in kwargs["tools"]] == ["weather"]
    assert "must answer with a tool call" in prompt[0]["content"]
    llm.chat_with_tools(TOOLS, user_msg="Hi", tool_choice="none")
    assert "tools" not in fake.calls[-1][1]
    with pytest.raises(ValueError, match="nope"):
        llm.chat_with_tools(TOOLS, user_msg="Hi", tool_choice="nope")


def test_predict_and_call_runs_the_tool(llm: RKLLM, scripted: Any, monkeypatch: Any) -> None:
    scripted(CALL_ADD)
    # predict_and_call takes the function-calling path only for function-calling models
    meta = llm.metadata.model_copy(update={"is_function_calling_model": True})
    monkeypatch.setattr(type(llm), "metadata", property(lambda self: meta))
    result = llm.predict_and_call(TOOLS, user_msg="What is 3 plus 4?")
    assert result.response == "7"
    assert result.sources[0].tool_name == "add"


def test_tool_turns_convert_to_core_messages(llm: RKLLM) -> None:
    assistant = ChatMessage(
        role=MessageRole.ASSISTANT,
        blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="add", tool_kwargs={"a": 3})],
    )
    tool = ChatMessage(
        role=MessageRole.TOOL, content="7", additional_kwargs={"tool_call_id": "call_1"}
    )
    assert to_core_message(assistant) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1", "name": "add", "arguments": {"a": 3}}],
    }
    assert to_core_message(tool) == {"role": "tool", "content": "7", "tool_call_id": "call_1"}
    # the OpenAI-style form older integrations store in additional_kwargs
    legacy = ChatMessage(
        role=MessageRole.ASSISTANT,
        content="",
        additional_kwargs={
            "tool_calls": [
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Orlen"}'},
                }
            ]
        },
    )
    assert to_core_message(legacy)["tool_calls"] == [
        {"id": "c2", "name": "weather", "arguments": {"city": "Orlen"}}
    ]
    # the whole exchange renders with the model's template
    rendered = llm.core_model.render_chat(
        [{"role": "user", "content": "3 + 4?"}, to_core_message(assistant), to_core_message(tool)]
    )
    assert "3 + 4?" in rendered and "7" in rendered


def test_non_text_content_is_refused() -> None:
    from llama_index.core.base.llms.types import ImageBlock

    message = ChatMessage(role="user", blocks=[ImageBlock(url="https://example.com/a.png")])
    with pytest.raises(ValueError, match="text only"):
        to_core_message(message)


TOOL_MODEL = os.environ.get("RKLLM_TEST_TOOL_MODEL")


@pytest.mark.slow
@pytest.mark.skipif(not TOOL_MODEL, reason="set RKLLM_TEST_TOOL_MODEL=qwen2.5-coder-0.5b")
def test_real_function_calling_model() -> None:
    llm = RKLLM(model=TOOL_MODEL, max_new_tokens=48)
    assert llm.metadata.is_function_calling_model is True
    response = llm.chat_with_tools(TOOLS, user_msg="What is 3 plus 4?")
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "add"
    # a 0.5B model sometimes quotes numbers; the values are what matters here
    assert {k: int(v) for k, v in selection.tool_kwargs.items()} == {"a": 3, "b": 4}
    # the answer turn renders through Qwen's template: assistant tool call + tool response
    history = [
        ChatMessage(role="user", content="What is 3 plus 4?"),
        response.message,
        ChatMessage(
            role="tool", content="7", additional_kwargs={"tool_call_id": selection.tool_id}
        ),
    ]
    rendered = llm.core_model.render_chat([to_core_message(m) for m in history])
    assert "<tool_call>" in rendered and "<tool_response>\n7\n</tool_response>" in rendered


class ScriptedStream:
    """Stands in for a core ``TokenStream``: scripted pieces, then the scripted result."""

    def __init__(self, pieces: list[str], tools: bool) -> None:
        from rkllm_core import StreamChunk

        self._chunks = [StreamChunk(p, i) for i, p in enumerate(pieces)]
        kwargs = {"tools": [{}]} if tools else {}
        self.result = ScriptedGenerate("".join(pieces))("", **kwargs)
        self.closed = False

    def __iter__(self) -> Any:
        return iter(self._chunks)

    def close(self) -> None:
        self.closed = True


def test_streamed_tool_call_markup_is_not_answer_text(
    llm: RKLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = [
        "Let me add. <",
        "tool",
        '_call>{"name": "add", ',
        '"arguments": {"a": 3, "b": 4}}',
        "</",
    ]
    pieces += ["tool_call>"]
    monkeypatch.setattr(llm.core_model, "stream", lambda *a, **k: ScriptedStream(pieces, True))
    chunks = list(llm.stream_chat_with_tools(TOOLS, user_msg="What is 3 plus 4?"))
    assert "".join(c.delta or "" for c in chunks) == "Let me add. "
    assert all("<" not in (c.message.content or "") for c in chunks)
    (selection,) = llm.get_tool_calls_from_response(chunks[-1])
    assert (selection.tool_name, selection.tool_kwargs) == ("add", {"a": 3, "b": 4})


def test_text_that_only_looks_like_a_tag_start_is_streamed(
    llm: RKLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = ["1 <", " 2 and x <to"]
    monkeypatch.setattr(llm.core_model, "stream", lambda *a, **k: ScriptedStream(pieces, True))
    chunks = list(llm.stream_chat_with_tools(TOOLS, user_msg="Is 1 < 2?"))
    assert "".join(c.delta or "" for c in chunks) == "1 < 2 and x <to"
    assert chunks[-1].message.content == "1 < 2 and x <to"
    assert llm.get_tool_calls_from_response(chunks[-1], error_on_no_tool_call=False) == []
