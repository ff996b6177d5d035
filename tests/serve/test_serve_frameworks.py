"""LangChain's ChatOpenAI / OpenAIEmbeddings and LlamaIndex's OpenAILike against the server."""

from __future__ import annotations

import numpy as np
import pytest

from rkllm_core import RKLLMModel
from rkllm_core.serve.runner import BackgroundServer


def test_langchain_chat_openai(server: BackgroundServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.tools import tool

    chat = langchain_openai.ChatOpenAI(model="scripted", base_url=server.base_url,
                                       api_key="unused", max_retries=0)
    answer = chat.invoke([SystemMessage("Be brief."), HumanMessage("hello world")])
    assert answer.content == "You said: hello world"
    assert answer.usage_metadata["output_tokens"] == 4
    assert answer.response_metadata["finish_reason"] == "stop"
    streamed = list(chat.stream("count to 5"))
    assert "".join(c.content for c in streamed) == "1 2 3 4 5"
    assert len([c for c in streamed if c.content]) == 5

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"

    with_tools = chat.bind_tools([get_weather])
    call_message = with_tools.invoke("What is the weather in Paris?")
    assert isinstance(call_message, AIMessage)
    (call,) = call_message.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    result = get_weather.invoke(call["args"])
    follow = with_tools.invoke([HumanMessage("What is the weather in Paris?"), call_message,
                                ToolMessage(result, tool_call_id=call["id"]),
                                HumanMessage("thanks")])
    assert follow.content == "You said: thanks"
    chunks = list(with_tools.stream("weather in Paris please"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls[0]["args"] == {"city": "Paris"}


async def test_langchain_chat_openai_async(server: BackgroundServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(model="scripted", base_url=server.base_url,
                                       api_key="unused", max_retries=0)
    answer = await chat.ainvoke("async hello")
    assert answer.content == "You said: async hello"
    pieces = [c.content async for c in chat.astream("count to 3")]
    assert "".join(pieces) == "1 2 3"


def test_langchain_openai_embeddings(server: BackgroundServer, model: RKLLMModel) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    embeddings = langchain_openai.OpenAIEmbeddings(
        model="scripted", base_url=server.base_url, api_key="unused", max_retries=0,
        # LangChain would otherwise send tiktoken ids, which mean nothing to another model
        check_embedding_ctx_length=False,
    )
    docs = ["Paris is in France.", "The Rhine flows north."]
    got = np.array(embeddings.embed_documents(docs), dtype=np.float32)
    np.testing.assert_allclose(got, model.embed(docs), rtol=1e-5, atol=1e-6)
    query = np.array(embeddings.embed_query("Where is Paris?"), dtype=np.float32)
    np.testing.assert_allclose(query, model.embed("Where is Paris?")[0], rtol=1e-5, atol=1e-6)


def test_llamaindex_openai_like(server: BackgroundServer) -> None:
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage

    llm = openai_like.OpenAILike(model="scripted", api_base=server.base_url, api_key="unused",
                                 is_chat_model=True, context_window=2048, max_retries=0)
    assert llm.complete("hello index").text == "You said: hello index"
    reply = llm.chat([ChatMessage(role="user", content="chat index")])
    assert reply.message.content == "You said: chat index"
    deltas = [r.delta for r in llm.stream_chat([ChatMessage(role="user", content="count to 4")])]
    assert "".join(d or "" for d in deltas) == "1 2 3 4"
    completion_llm = openai_like.OpenAILike(model="scripted", api_base=server.base_url,
                                            api_key="unused", is_chat_model=False,
                                            context_window=2048, max_retries=0)
    assert completion_llm.complete("count to 2").text == "1 2"


async def test_llamaindex_openai_like_async(server: BackgroundServer) -> None:
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    llm = openai_like.OpenAILike(model="scripted", api_base=server.base_url, api_key="unused",
                                 is_chat_model=True, context_window=2048, max_retries=0)
    reply = await llm.acomplete("async index")
    assert reply.text == "You said: async index"
    stream = await llm.astream_complete("count to 3")
    assert [r.text async for r in stream][-1] == "1 2 3"
