"""LangChain's standard unit suites (no model is loaded: construction must be cheap)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings


class TestChatRKLLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRKLLM]:
        return ChatRKLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no API key; ChatRKLLM rejects unknown fields, so leave it out.
        params = super().standard_chat_model_params
        params.pop("api_key", None)
        return params


class TestRKLLMEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[RKLLMEmbeddings]:
        return RKLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2"}
