"""LangChain's standard integration suites on the PC engine with the SmolLM2 demo model."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_rkllm import RKLLMEmbeddings

from .conftest import DEMO_MODEL
from .suites import RKLLMChatIntegrationSuite

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("demo_model")]


class TestChatRKLLMIntegration(RKLLMChatIntegrationSuite):
    model_name = DEMO_MODEL

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Greedy and short: SmolLM2 on shared CPU cores decodes a few tokens per second.
        return {"model": DEMO_MODEL, "temperature": 0, "max_tokens": 8}

    # What SmolLM2-135M can actually do. The code paths behind these flags (bind_tools,
    # tool_choice, with_structured_output in all three methods) exist and are tested in
    # test_chat_tools.py; the 135M model just does not fill tool arguments or follow a
    # JSON schema reliably enough to pass the suite's content checks.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False


class TestRKLLMEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[RKLLMEmbeddings]:
        return RKLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": DEMO_MODEL}
