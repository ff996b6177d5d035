"""What LangChain's standard chat-model integration suite needs to know about ChatRKLLM,
shared by the SmolLM2 and the Qwen runs (each subclass names its model and capabilities).

The class name does not start with ``Test``, so pytest collects only the subclasses.
"""

from __future__ import annotations

from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_rkllm import ChatRKLLM
from rkllm_core import KNOWN_MODELS, fetch_model


class RKLLMChatIntegrationSuite(ChatModelIntegrationTests):
    #: demo name or path of the model the suite runs on
    model_name: str

    @property
    def chat_model_class(self) -> type[ChatRKLLM]:
        return ChatRKLLM

    @property
    def model_override_value(self) -> str:
        # Another name for the same model (its file path): the per-call ``model=`` path is
        # exercised, and shared_model resolves it to the already loaded copy.
        name = self.model_name
        return str(fetch_model(name)) if name in KNOWN_MODELS else name

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False
