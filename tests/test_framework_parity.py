"""The same model outputs give the same answer through LangChain and LlamaIndex.

Both adapters run on a real core model over the scripted engine, so the only difference
between the two sides is the adapters' translation; the reply itself is decided in the core.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage
from llama_index.core.tools import FunctionTool
from scripted_engine import PLAIN_TEMPLATE, TOOLS_TEMPLATE

from langchain_rkllm import ChatRKLLM
from llamaindex_rkllm import RKLLM


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def weather(city: str) -> str:
    """Weather in a city."""
    return f"sunny in {city}"


LI_TOOLS = [FunctionTool.from_defaults(add), FunctionTool.from_defaults(weather)]
LC_TOOLS = [t.metadata.to_openai_tool(skip_length_check=True) for t in LI_TOOLS]
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>'

CASES: dict[str, tuple[list[str], Any]] = {
    "text": (["The", " answer", " is", " 7", "."], None),
    "tagged call": (["Sure.", " <tool", "_call>", CALL[len("<tool_call>"):]], None),
    "bare call": (['{"name": "add", ', '"arguments": {"a": 3, "b": 4}}'], None),
    "fenced call": (['```json\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n```'], None),
    "two calls": ([CALL, '\n<tool_call>{"name": "weather", "arguments": {"city": "Orlen"}}'
                   "</tool_call>"], None),
    "broken json": (['<tool_call>\n{"name": "add", "arguments": {"a": 3,\n</tool_call>'], None),
    "unbound tool": (['<tool_call>{"name": "nope", "arguments": {}}</tool_call>'], None),
    "json after a call": (['{"name": "add", "arguments": {"a": 3, "b": 4}}\n',
                           '{"response": "7"}'], None),
    "forced named call": ([' 3, "b": 4}}', "\n</tool_call> and chatter"], "add"),
    "forced any call": (['weather", "arguments": {"city": "Orlen"}}'], "required"),
    "forced unbound name": (['Acme Corp.", "arguments": {}}'], "required"),
    "forced broken call": ([" {type: 1}}}"], "add"),
}


def via_langchain(model: Any, tool_choice: Any) -> tuple[Any, ...]:
    llm = ChatRKLLM(model="scripted")
    llm._loaded = model
    bound = llm.bind_tools(LC_TOOLS, tool_choice=tool_choice)
    msg = bound.invoke("What is 3 plus 4?")
    assert isinstance(msg, AIMessage)
    streamed = "".join(str(c.content) for c in bound.stream("What is 3 plus 4?"))
    return (
        msg.content,
        streamed,
        [(c["name"], c["args"]) for c in msg.tool_calls],
        [(c["name"], c["error"]) for c in msg.invalid_tool_calls],
        msg.response_metadata["finish_reason"],
    )


def via_llamaindex(model: Any, tool_choice: Any) -> tuple[Any, ...]:
    llm = RKLLM(model=model)
    kwargs = {"tool_choice": tool_choice, "allow_parallel_tool_calls": True}
    response = llm.chat_with_tools(LI_TOOLS, user_msg="What is 3 plus 4?", **kwargs)
    chunks = list(llm.stream_chat_with_tools(LI_TOOLS, user_msg="What is 3 plus 4?", **kwargs))
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
    invalid = response.additional_kwargs.get("invalid_tool_calls", [])
    return (
        response.message.content or "",
        "".join(c.delta or "" for c in chunks),
        [(c.tool_name, c.tool_kwargs) for c in calls],
        [(c["name"], c["error"]) for c in invalid],
        response.raw["finish_reason"],
    )


@pytest.mark.parametrize("template", [TOOLS_TEMPLATE, PLAIN_TEMPLATE], ids=["tools", "plain"])
@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_through_both_frameworks(case: str, template: str, scripted: Any) -> None:
    pieces, tool_choice = CASES[case]
    lc_model, lc_engine = scripted(pieces, chat_template=template)
    li_model, li_engine = scripted(pieces, chat_template=template)
    lc = via_langchain(lc_model, tool_choice)
    li = via_llamaindex(li_model, tool_choice)
    assert lc == li
    content, streamed, calls, _, reason = lc
    assert streamed == content  # the stream adds up to the answer, markup never shown
    assert "<tool_call>" not in content
    if calls:
        assert reason == "tool_calls"
    # the same prompt reached the model (same messages, tools and prefill)
    assert lc_engine.prompts[-1] == li_engine.prompts[-1]


def test_expected_outcomes() -> None:
    """What the cases above must give (checked once, on the core directly)."""
    from scripted_engine import scripted_model

    expected = {
        "text": ("The answer is 7.", [], []),
        "tagged call": ("Sure.", ["add"], []),
        "bare call": ("", ["add"], []),
        "two calls": ("", ["add", "weather"], []),
        "broken json": ("", [], [None]),
        "unbound tool": ("", [], ["nope"]),
        "json after a call": ("".join(CASES["json after a call"][0]), [], []),
        "forced named call": ("", ["add"], []),
        "forced unbound name": ("", [], ["Acme Corp."]),
        "forced broken call": ("", [], ["add"]),
    }
    for case, (content, names, invalid) in expected.items():
        pieces, tool_choice = CASES[case]
        model, _ = scripted_model(pieces)
        try:
            result = model.generate(
                [{"role": "user", "content": "q"}], tools=LC_TOOLS, tool_choice=tool_choice
            )
        finally:
            model.close()
        assert result.content == content, case
        assert [c.name for c in result.tool_calls] == names, case
        assert [c.name for c in result.invalid_tool_calls] == invalid, case


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_same_errors(framework: str, scripted: Any) -> None:
    model, _ = scripted(["a"], prefill_s=2.0)
    if framework == "langchain":
        llm = ChatRKLLM(model="scripted", timeout=0.2)
        llm._loaded = model
        with pytest.raises(ValueError, match="does not name a bound tool"):
            llm.bind_tools(LC_TOOLS, tool_choice="nope")
        with pytest.raises(TimeoutError, match=r"timeout=0\.2"):
            llm.invoke("hi")
    else:
        li = RKLLM(model=model, timeout=0.2)
        with pytest.raises(ValueError, match="does not name a bound tool"):
            li.chat_with_tools(LI_TOOLS, user_msg="hi", tool_choice="nope")
        with pytest.raises(TimeoutError, match=r"timeout=0\.2"):
            li.complete("hi")
