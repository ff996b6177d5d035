"""Fixtures for the LlamaIndex tests: the demo model is loaded once per session.

Every ``RKLLM`` / ``RKLLMEmbedding`` built here goes through ``rkllm_core.shared_model``, so
creating more instances in a test costs nothing: they all reuse the first load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Settings

from llamaindex_rkllm import RKLLM, RKLLMEmbedding

DEMO_MODEL = os.environ.get("RKLLM_TEST_MODEL", "smollm2")
# small on purpose: two CPU cores are shared, and every test only needs a few tokens
MAX_TOKENS = 8


@pytest.fixture(scope="session")
def llm() -> RKLLM:
    """The demo model as a LlamaIndex LLM (greedy by default, 8 new tokens)."""
    return RKLLM(model=DEMO_MODEL, max_new_tokens=MAX_TOKENS)


@pytest.fixture(scope="session")
def embed_model() -> RKLLMEmbedding:
    """The demo model as a LlamaIndex embedding model (the model's default strategy)."""
    return RKLLMEmbedding(model=DEMO_MODEL)


@pytest.fixture()
def restore_settings() -> Iterator[None]:
    """Put the global LlamaIndex Settings back the way they were after the test."""
    saved: dict[str, Any] = {
        "_llm": Settings._llm,
        "_embed_model": Settings._embed_model,
        "_node_parser": Settings._node_parser,
        "_callback_manager": Settings._callback_manager,
    }
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(Settings, name, value)
