"""Fixtures for the LangChain tests: the SmolLM2 demo model, loaded once per session."""

from __future__ import annotations

import os

import pytest

from rkllm_core import RKLLMModel, shared_model

DEMO_MODEL = os.environ.get("RKLLM_TEST_MODEL", "smollm2")


@pytest.fixture(scope="session")
def demo_model() -> RKLLMModel:
    """The shared demo model: every ChatRKLLM/RKLLM/RKLLMEmbeddings on it reuses this load."""
    return shared_model(DEMO_MODEL)
