"""The server on real models (SmolLM2, a tiny random Llama), and the ``rkllm serve`` command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rkllm_core import shared_model
from rkllm_core.cli import build_parser
from rkllm_core.serve import ServeConfig
from rkllm_core.serve.cli import served_names
from rkllm_core.serve.runner import BackgroundServer

openai = pytest.importorskip("openai")


@pytest.mark.integration
def test_demo_model_over_http_matches_direct_calls() -> None:
    model = shared_model("smollm2")  # the load the framework tests share
    question = [{"role": "user", "content": "What is the capital of France?"}]
    direct = model.generate(question, max_new_tokens=12, top_k=1)
    with BackgroundServer(model, ServeConfig(port=0, served_names=("smollm2",))) as srv:
        api = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        reply = api.chat.completions.create(model="smollm2", messages=question, max_tokens=12,
                                            extra_body={"top_k": 1})
        assert "Paris" in reply.choices[0].message.content
        # greedy decoding through the server gives what the model gives directly
        assert reply.choices[0].message.content == direct.text
        assert reply.usage.completion_tokens == direct.usage.completion_tokens
        assert reply.usage.prompt_tokens == direct.usage.prompt_tokens
        assert [m.id for m in api.models.list().data] == ["smollm2"]
        texts = ["Paris is the capital of France."]
        vectors = api.embeddings.create(model="smollm2", input=texts, encoding_format="float")
        got = np.array([d.embedding for d in vectors.data], dtype=np.float32)
        np.testing.assert_allclose(got, model.embed(texts), rtol=1e-4, atol=1e-5)
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(
                model="smollm2", max_tokens=4,
                messages=[{"role": "user", "content": "word " * (model.config.max_context_len
                                                                + 10)}])
        assert caught.value.body["code"] == "context_length_exceeded"
    assert not model.closed  # the caller owns it


def test_serve_subcommand_is_registered_and_lazy() -> None:
    args = build_parser().parse_args(["serve", "smollm2", "--port", "9000", "--max-queue", "3",
                                      "--api-key", "k"])
    assert (args.command, args.port, args.max_queue, args.api_key) == ("serve", 9000, 3, "k")
    assert args.host == "127.0.0.1"
    assert served_names("smollm2", []) == ("smollm2",)
    assert served_names("/models/qwen.rkllm", []) == ()
    assert served_names("/models/qwen.rkllm", ["qwen"]) == ("qwen",)
    # the board path (the rkllm command without serving) imports no server package
    probe = ("import sys, rkllm_core.cli as c; c.build_parser(); print(sorted(m for m in"
             " ('starlette', 'uvicorn', 'jsonschema') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_rkllm_serve_command_end_to_end(tiny_model_dir: Path) -> None:
    """The real command on a tiny PC model: loads, answers, drains on SIGTERM, exits 0."""
    command = [sys.executable, "-m", "rkllm_core.cli", "serve", str(tiny_model_dir),
               "--port", "0", "--max-new-tokens", "6", "--api-key", "k", "--grace", "5"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        root = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
        headers = {"Authorization": "Bearer k"}
        deadline = time.monotonic() + 120
        while httpx.get(root + "/ready", headers=headers).status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        api = openai.OpenAI(base_url=root + "/v1", api_key="k", max_retries=0)
        (listed,) = api.models.list().data
        assert listed.id == tiny_model_dir.name  # a path: served under the model's own name
        reply = api.chat.completions.create(model=listed.id,
                                            messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "model closed" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
