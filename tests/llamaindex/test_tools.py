"""Function calling: tools reach the core, tool calls come back as LlamaIndex objects.

SmolLM2-135M does not call tools, so the adapter's logic is tested on a real core model over a
scripted engine (the core plans and assembles the reply, only the words are fixed);
``RKLLM_TEST_TOOL_MODEL=qwen2.5-coder-0.5b`` adds an end-to-end run on a model whose chat
template has tools (slow: about two minutes on two shared cores).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.tools import FunctionTool
from scripted_engine import PLAIN_TEMPLATE

from llamaindex_rkllm import RKLLM
from llamaindex_rkllm.llms import to_core_message

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


@pytest.fixture()
def scripted_llm(scripted: Any) -> Any:
    """An ``RKLLM`` over a real core model whose engine answers with scripted pieces; the
    default template has no tools support, like SmolLM2's."""

    def make(*answers: list[str], chat_template: str = PLAIN_TEMPLATE) -> tuple[RKLLM, Any]:
        model, engine = scripted(*answers, chat_template=chat_template)
        return RKLLM(model=model), engine

    return make


def test_tools_reach_the_core_and_calls_come_back(scripted_llm: Any) -> None:
    llm, engine = scripted_llm([CALL_ADD])
    response = llm.chat_with_tools(TOOLS, user_msg="What is 3 plus 4?")
    prompt = engine.prompts[0]
    # SmolLM2's template cannot render tools: they are described in the system turn, once
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n")
    assert system.count('"name": "add"') == 1 and system.count('"name": "weather"') == 1
    assert system.index('"name": "add"') < system.index('"name": "weather"')
    assert '"properties": {"a": {' in system and '"b": {' in system
    assert prompt.count('"name": "add"') == 1  # not listed a second time in another format
    assert prompt.endswith(
        "<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n"
    )
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "add"
    assert selection.tool_kwargs == {"a": 3, "b": 4}
    assert selection.tool_id.startswith("call_")
    assert response.message.content is None  # the markup is not left in the text
    usage = response.additional_kwargs
    assert usage["prompt_tokens"] == len(prompt.split()) and usage["completion_tokens"] == 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + 1


def test_parallel_calls_are_kept_only_when_allowed(scripted_llm: Any) -> None:
    llm, _ = scripted_llm([CALL_ADD + "\n" + CALL_WEATHER])
    single = llm.chat_with_tools(TOOLS, user_msg="Add 3 and 4, and the weather in Orlen")
    assert [s.tool_name for s in llm.get_tool_calls_from_response(single)] == ["add"]
    both = llm.chat_with_tools(TOOLS, user_msg="…", allow_parallel_tool_calls=True)
    assert [s.tool_name for s in llm.get_tool_calls_from_response(both)] == ["add", "weather"]


def test_no_tool_call(scripted_llm: Any) -> None:
    llm, _ = scripted_llm(["I do not need a tool for that."])
    response = llm.chat_with_tools(TOOLS, user_msg="Hello")
    assert response.message.content == "I do not need a tool for that."
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(response)


def test_unparsable_call_is_reported(scripted_llm: Any) -> None:
    llm, _ = scripted_llm(['<tool_call>{"name": "add", "arguments": {"a": 3,</tool_call>'])
    response = llm.chat_with_tools(TOOLS, user_msg="What is 3 plus 4?")
    assert response.additional_kwargs["invalid_tool_calls"]
    with pytest.raises(ValueError, match="unparsable"):
        llm.get_tool_calls_from_response(response)


def test_tool_choice_and_tool_required(scripted_llm: Any) -> None:
    # a forced call is started for the model (as in LangChain), not asked for in a sentence
    llm, engine = scripted_llm([' "Orlen"}}'])
    response = llm.chat_with_tools(TOOLS, user_msg="Weather?", tool_choice="weather")
    assert engine.prompts[-1].endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city":'
    )
    (selection,) = llm.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs) == ("weather", {"city": "Orlen"})
    engine.script(['add", "arguments": {"a": 3, "b": 4}}'])
    required = llm.chat_with_tools(TOOLS, user_msg="3 + 4?", tool_required=True)
    assert engine.prompts[-1].endswith('<tool_call>\n{"name": "')
    assert [s.tool_name for s in llm.get_tool_calls_from_response(required)] == ["add"]
    engine.script(["Hello."])
    llm.chat_with_tools(TOOLS, user_msg="Hi", tool_choice="none")
    assert '"name": "add"' not in engine.prompts[-1]  # no tools offered at all
    assert engine.prompts[-1].endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="nope"):
        llm.chat_with_tools(TOOLS, user_msg="Hi", tool_choice="nope")


def test_forced_call_naming_an_unbound_tool_is_not_valid(scripted_llm: Any) -> None:
    llm, _ = scripted_llm(['Acme Corp.", "arguments": {}}'])
    response = llm.chat_with_tools(TOOLS, user_msg="Who?", tool_required=True)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    (bad,) = response.additional_kwargs["invalid_tool_calls"]
    assert bad["name"] == "Acme Corp." and "bound tools" in bad["error"]


def test_predict_and_call_runs_the_tool(scripted_llm: Any, monkeypatch: Any) -> None:
    llm, _ = scripted_llm([CALL_ADD])
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


def test_streamed_tool_call_markup_is_not_answer_text(scripted_llm: Any) -> None:
    pieces = [
        "Let me add. <",
        "tool",
        '_call>{"name": "add", ',
        '"arguments": {"a": 3, "b": 4}}',
        "</",
    ]
    pieces += ["tool_call>"]
    llm, _ = scripted_llm(pieces)
    chunks = list(llm.stream_chat_with_tools(TOOLS, user_msg="What is 3 plus 4?"))
    assert "".join(c.delta or "" for c in chunks) == "Let me add."
    assert all("<" not in (c.message.content or "") for c in chunks)
    (selection,) = llm.get_tool_calls_from_response(chunks[-1])
    assert (selection.tool_name, selection.tool_kwargs) == ("add", {"a": 3, "b": 4})


def test_streamed_bare_json_call_is_not_answer_text(scripted_llm: Any) -> None:
    # the LangChain adapter always held this back; LlamaIndex streamed it as the answer
    llm, _ = scripted_llm(['{"name": "add", ', '"arguments": {"a": 3, "b": 4}}'])
    chunks = list(llm.stream_chat_with_tools(TOOLS, user_msg="What is 3 plus 4?"))
    assert "".join(c.delta or "" for c in chunks) == ""
    (selection,) = llm.get_tool_calls_from_response(chunks[-1])
    assert (selection.tool_name, selection.tool_kwargs) == ("add", {"a": 3, "b": 4})


def test_text_that_only_looks_like_a_tag_start_is_streamed(scripted_llm: Any) -> None:
    pieces = ["1 <", " 2 and x <to"]
    llm, _ = scripted_llm(pieces)
    chunks = list(llm.stream_chat_with_tools(TOOLS, user_msg="Is 1 < 2?"))
    assert "".join(c.delta or "" for c in chunks) == "1 < 2 and x <to"
    assert chunks[-1].message.content == "1 < 2 and x <to"
    assert llm.get_tool_calls_from_response(chunks[-1], error_on_no_tool_call=False) == []


def test_answer_after_a_tool_result_is_never_lost(scripted_llm: Any) -> None:
    # Qwen2.5 answering a tool result (FunctionAgent ended with an empty answer)
    text = '{"name": "add", "arguments": {"a": 3, "b": 4}}\n{"response": "7"}'
    llm, _ = scripted_llm([text])
    response = llm.chat_with_tools(TOOLS, user_msg="What is 3 plus 4?")
    assert response.message.content == text
    assert "invalid_tool_calls" not in response.additional_kwargs
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []


async def test_function_agent_ends_with_the_models_answer(scripted: Any) -> None:
    """After the tool result, Qwen2.5 echoed the call and the answer, untagged: the agent
    used to end with an empty answer (the text was taken for a broken call)."""
    from llama_index.core.agent.workflow import FunctionAgent

    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    echo = '{"name": "multiply", "arguments": {"a": 24, "b": 37}}\n{"response": "888"}'
    model, engine = scripted(
        ['<tool_call>{"name": "multiply", "arguments": {"a": 24, "b": 37}}</tool_call>'],
        [echo],
    )
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=RKLLM(model=model))
    result = await agent.run("What is 24 times 37?")
    assert "888" in str(result)
    assert len(engine.requests) == 2  # the call, then the answer to the tool result
    assert "888" in engine.prompts[-1]  # the tool's result reached the model
