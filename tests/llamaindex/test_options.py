"""LlamaIndex ``RKLLM`` fields and per-call options: refused when unknown, honoured when known.

Runs on a real core model over the scripted engine: no model file is loaded.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel, ValidationError

from llamaindex_rkllm import RKLLM
from rkllm_core import RequestTimeoutError


class Person(BaseModel):
    """A person."""

    name: str
    age: int


USER = [ChatMessage(role="user", content="hi")]


@pytest.mark.parametrize(
    "field", [{"max_new_token": 5}, {"json_mod": True}, {"request_timeout": 60}]
)
def test_unknown_fields_are_refused(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(field))):
        RKLLM(model="smollm2", **field)


def test_construction_is_lazy() -> None:
    llm = RKLLM(model="/nonexistent/model.gguf", max_tokens=4)
    assert llm._model is None  # nothing loaded until the first call


def test_max_tokens_is_honoured_and_max_new_tokens_is_its_alias(scripted: Any) -> None:
    model, engine = scripted(["w"] * 20)
    assert RKLLM(model=model, max_tokens=5).complete("x").additional_kwargs[
        "completion_tokens"
    ] == 5
    assert RKLLM(model=model, max_new_tokens=3).metadata.num_output == 3
    llm = RKLLM(model=model)
    assert llm.complete("x", max_tokens=2).raw["finish_reason"] == "length"
    assert len(engine.requests) == 2
    with pytest.raises(ValueError, match="same setting"):
        llm.complete("x", max_tokens=2, max_new_tokens=3)


def test_json_mode_starts_every_answer_as_an_object(scripted: Any) -> None:
    model, engine = scripted(['a": 1}', " trailing words"])
    llm = RKLLM(model=model, json_mode=True)
    response = llm.chat(USER)
    assert engine.prompts[-1].endswith('ASSISTANT:{"')
    assert json.loads(response.message.content or "") == {"a": 1}
    assert llm.complete("x").text == '{"a": 1}'


def test_structured_predict_prefills_from_the_schema(scripted: Any) -> None:
    model, engine = scripted([' "Ada", "age": 36}', " and more"])
    llm = RKLLM(model=model)
    person = llm.structured_predict(Person, PromptTemplate("Describe {who}."), who="Ada")
    assert person == Person(name="Ada", age=36)
    prompt = engine.prompts[-1]
    assert "Describe Ada." in prompt and prompt.endswith('ASSISTANT:{"name":')
    assert "conforms to this JSON schema" in prompt
    structured = llm.as_structured_llm(Person)
    engine.script([' "Bo", "age": 7}'])
    out = structured.chat([ChatMessage(role="user", content="Bo, 7")])
    assert out.raw == Person(name="Bo", age=7)


async def test_astructured_predict(scripted: Any) -> None:
    model, _ = scripted([' "Ada", "age": 36}'])
    person = await RKLLM(model=model).astructured_predict(Person, PromptTemplate("Ada?"))
    assert person == Person(name="Ada", age=36)


def test_timeout_counts_queue_time(scripted: Any) -> None:
    model, engine = scripted(["a"], prefill_s=5.0)
    llm = RKLLM(model=model, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        llm.chat(USER)
    assert time.monotonic() - start < 4.0  # not after the whole 5 s prefill
    engine.prefill_s = 0.0
    with pytest.raises(TimeoutError):
        RKLLM(model=model).complete("x", timeout=1e-6)


def test_all_three_classes_share_one_model_given_the_same_loading_fields(
    tiny_model_dir: Any,
) -> None:
    """LLM, embeddings and reranker declare the loading fields once; the same fields load
    one shared copy, a different window another (the reranker used to ignore them)."""
    from llamaindex_rkllm import RKLLMEmbedding, RKLLMRerank

    fields = {"model": str(tiny_model_dir), "backend": "pc", "context_window": 192}
    llm = RKLLM(**fields)
    embed = RKLLMEmbedding(**fields)
    rerank = RKLLMRerank(**fields)
    assert rerank.core_model is embed.core_model is llm.core_model
    assert rerank.core_model.config.max_context_len == 192
    other = RKLLMRerank(model=str(tiny_model_dir), backend="pc", max_context_len=160)
    assert other.core_model is not rerank.core_model
    assert other.core_model.config.max_context_len == 160
