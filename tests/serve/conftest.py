"""Fixtures for the server tests: servers on loopback ports over a scripted engine.

Tests that need separate processes (signals, killing one server under the router) start
``serve_scripted_server.py``; the others run the server on a thread of the test process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serve_scripted import ScriptedEngine, ServerProcess, scripted_model

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.serve import ServeConfig
from rkllm_core.serve.runner import BackgroundServer

# LiteLLM fetches a price list from the internet at import unless told not to
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def engine() -> ScriptedEngine:
    """A scripted engine answering at 2 ms per token."""
    return ScriptedEngine(token_delay=0.002)


@pytest.fixture
def model(engine: ScriptedEngine) -> Iterator[RKLLMModel]:
    """A real RKLLMModel over the scripted engine."""
    loaded = scripted_model(engine, RuntimeConfig(max_new_tokens=256))
    yield loaded
    loaded.close()


@pytest.fixture
def server(model: RKLLMModel) -> Iterator[BackgroundServer]:
    """A server for ``model`` on a free loopback port, serving it as 'scripted'."""
    with BackgroundServer(model, ServeConfig(port=0, served_names=("scripted",))) as srv:
        yield srv


@pytest.fixture
def server_process() -> Iterator[type[ServerProcess]]:
    """Start server processes; every one is killed at the end of the test."""
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, *args: str, log: Path | None = None) -> None:
            super().__init__(*args, log=log)
            started.append(self)

    yield Tracked
    for proc in started:
        proc.stop()
