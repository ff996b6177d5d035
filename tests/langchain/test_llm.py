"""RKLLM (completion LLM) on the demo model."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from langchain_rkllm import RKLLM

from .conftest import DEMO_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("demo_model")]

PROMPT = "The three primary colours are"


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_invoke_stream_and_callbacks_agree() -> None:
    llm = RKLLM(model=DEMO_MODEL, temperature=0, max_tokens=8)
    recorder = TokenRecorder()
    text = llm.invoke(PROMPT, config={"callbacks": [recorder]})
    assert text and "".join(recorder.tokens) == text
    assert "".join(llm.stream(PROMPT)) == text


def test_generate_reports_usage_and_finish_reason(demo_model: Any) -> None:
    llm = RKLLM(model=DEMO_MODEL, temperature=0, max_tokens=5)
    result = llm.generate([PROMPT])
    info = result.generations[0][0].generation_info or {}
    assert info["usage"]["prompt_tokens"] == len(demo_model.tokenize(PROMPT))
    assert info["usage"]["completion_tokens"] == 5 and info["finish_reason"] == "length"
    assert result.llm_output and result.llm_output["token_usage"]["total_tokens"] == (
        info["usage"]["prompt_tokens"] + 5
    )


def test_stop_strings() -> None:
    llm = RKLLM(model=DEMO_MODEL, temperature=0, max_tokens=12)
    full = llm.invoke(PROMPT)
    stop = full.strip()[1:4]  # inside the text, usually across a token boundary
    cut = llm.invoke(PROMPT, stop=[stop])
    assert cut == full[: full.index(stop)]
    with pytest.raises(ValueError, match="both at construction"):
        RKLLM(model=DEMO_MODEL, stop=["x"]).invoke(PROMPT, stop=["y"])


async def test_async_matches_sync() -> None:
    llm = RKLLM(model=DEMO_MODEL, temperature=0, max_tokens=6)
    expected = llm.invoke(PROMPT)
    assert await llm.ainvoke(PROMPT) == expected
    assert "".join([c async for c in llm.astream(PROMPT)]) == expected
