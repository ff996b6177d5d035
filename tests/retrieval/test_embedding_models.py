"""A dedicated decoder embedding model (the shape of Qwen3-Embedding: a Qwen3 decoder with a
sentence-transformers last-token pooling config) is recognised and embedded by its convention."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import RKLLMModel
from rkllm_core.embeddings import EMBEDDING_MODEL_INSTRUCTION


@pytest.fixture(scope="module")
def qwen3_embedding_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny random Qwen3 with the tiny Llama's tokenizer and a last-token pooling config."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen3-embedding")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, folder / name)
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=256)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_lasttoken": True,
         "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": False}))
    return folder


def test_embedding_model_uses_its_convention(qwen3_embedding_dir: Path) -> None:
    with RKLLMModel(qwen3_embedding_dir) as model:
        config = model.embedding_config
        assert (config.strategy, config.pooling, config.append_eos, config.center) == (
            "plain", "last", True, False)
        assert config.query_instruction == EMBEDDING_MODEL_INSTRUCTION
        text = "Rivers flow to the sea."
        ids = model.tokenize(text) + model.tokenize(model.info.eos_token)
        want = model.hidden_states(ids)[-1]  # the state of the appended EOS
        got = model.embed(text, normalize=False)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        query = model.embed(text, is_query=True, normalize=False)[0]
        prefixed = model.tokenize(EMBEDDING_MODEL_INSTRUCTION + text) + ids[-1:]
        np.testing.assert_allclose(query, model.hidden_states(prefixed)[-1], rtol=1e-4, atol=1e-5)


def test_a_generative_model_keeps_prompteol_centred(tiny_model_dir: Path) -> None:
    with RKLLMModel(tiny_model_dir) as model:
        config = model.embedding_config
        assert (config.strategy, config.center, config.append_eos) == ("prompteol", True, False)
