"""A second architecture: Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, assembled from 6 wheels).

Checks K-quant loading and tool calling through the model's own tool-aware chat template.
"""

from __future__ import annotations

import pytest

from rkllm_core import RKLLMModel, RuntimeConfig, fetch_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city name"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def qwen() -> RKLLMModel:
    path = fetch_model("qwen2.5-coder-0.5b")
    with RKLLMModel(path, RuntimeConfig(max_context_len=1024, max_new_tokens=48)) as model:
        yield model


def test_k_quant_model_loads_and_answers(qwen: RKLLMModel) -> None:
    assert qwen.info.architecture == "qwen2"
    assert qwen.info.quantization == "Q4_K_M"
    assert qwen.renderer.supports_tools
    answer = qwen.generate([{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in answer.text


def test_tool_call_through_the_chat_template(qwen: RKLLMModel) -> None:
    prompt = qwen.render_chat([{"role": "user", "content": "What's the weather in Oslo?"}],
                              tools=[WEATHER_TOOL])
    assert "get_weather" in prompt  # the template itself rendered the tool
    result = qwen.generate([{"role": "user", "content": "What's the weather in Oslo?"}],
                           tools=[WEATHER_TOOL], max_new_tokens=60)
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert result.tool_calls[0].arguments.get("city", "").lower() == "oslo"
