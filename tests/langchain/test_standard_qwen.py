"""LangChain's standard chat-model integration suite on a model that can call tools.

The SmolLM2 suite (test_standard_integration.py) has to switch tools and structured output
off: 135M parameters do not follow a schema. Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M) has a
tool-aware chat template and writes Hermes ``<tool_call>`` calls, so here the capability
flags say what this model really does, measured with greedy decoding (deterministic): all
four are on, and every test behind them passes (no xfail). Plain-chat tests take ~2.5 min;
the tool / structured-output tests ~15 min on two shared cores, nearly all of it prompt
prefill, hence the ``slow`` mark.
"""

from __future__ import annotations

from typing import Any

import pytest

from langchain_rkllm import ChatRKLLM
from rkllm_core import RKLLMModel, shared_model

from .suites import RKLLMChatIntegrationSuite

QWEN = "qwen2.5-coder-0.5b"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def qwen_model() -> RKLLMModel:
    """Load Qwen once: every ChatRKLLM in the suite resolves to this shared copy."""
    # Same (file, backend, default RuntimeConfig) key ChatRKLLM(model=QWEN) uses.
    return shared_model(QWEN)


class TestChatRKLLMQwenIntegration(RKLLMChatIntegrationSuite):
    model_name = QWEN

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Greedy (top_k=1) so every run decodes the same tokens; 0.5B on two shared CPU
        # cores writes a few tokens per second, so answers are capped short. Most of a
        # tool / schema call's time is prefilling the 150-300 token tool or schema prompt
        # (~20 tokens/s here), so the standard 60 s per-call timeout is raised: a loaded
        # machine must not turn into a spurious TimeoutError.
        return {"model": QWEN, "temperature": 0, "top_k": 1, "max_tokens": 64, "timeout": 300}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {}

    @property
    def supports_json_mode(self) -> bool:
        return True


class _FunctionCallingStructuredOutput(TestChatRKLLMQwenIntegration):
    """The suite's structured-output test again, with ``method="function_calling"``.

    Not collected as a whole class (its name does not start with ``Test``): only the
    structured-output test is run again below, so the other method is measured without
    repeating the other 48 tests.
    """

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "function_calling"}


@pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
def test_structured_output_function_calling(schema_type: str) -> None:
    suite = _FunctionCallingStructuredOutput()
    model = ChatRKLLM(**{**suite.standard_chat_model_params, **suite.chat_model_params})
    suite.test_structured_output(model, schema_type)  # type: ignore[arg-type]
