"""Fixtures for the server tests: servers on loopback ports over a scripted engine.

Tests that need separate processes (signals, killing one server under the router) start
``serve_scripted_server.py``; the others run the server on a thread of the test process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serve_scripted import ScriptedEngine, scripted_model

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.serve import ServeConfig
from rkllm_core.serve.runner import BackgroundServer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
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


class ServerProcess:
    """``serve_scripted_server.py`` in its own process."""

    def __init__(self, *args: str, log: Path | None = None) -> None:
        command = [sys.executable, str(HERE / "serve_scripted_server.py"), "--port", "0", *args]
        if log is not None:
            command += ["--log", str(log)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
        self.log = log
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"listening on (http://\S+)", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.root_url = found.group(1)
        self.base_url = self.root_url + "/v1"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.root_url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server not ready")

    def finished(self) -> list[str]:
        """Answers the engine finished (its log), without the close marker."""
        if self.log is None or not self.log.exists():
            return []
        return [x for x in self.log.read_text().splitlines() if not x.startswith("#")]

    def closed_model(self) -> bool:
        """Whether the engine was closed (the log's marker)."""
        return self.log is not None and "#closed" in self.log.read_text().splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


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
