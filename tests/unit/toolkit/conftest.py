"""Tiny random-weight models of several families, saved as Hugging Face directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps floating point numbers to small integers with a scale.",
    "def add(a, b):\n    return a + b\n",
    "Rockchip boards run language models on their NPU at forty tokens per second.",
    "Calibration data decides the activation ranges of every linear layer.",
]
VOCAB = 384


def make_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences (vocabulary < VOCAB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )


def _config(family: str, hidden: int, layers: int):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        Phi3Config,
        PhiConfig,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    head_dim = hidden // 4
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)  # q/k/v carry biases
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=head_dim)
    if family == "phi3":
        return Phi3Config(**common)  # fused qkv_proj and gate_up_proj
    if family == "phi":  # Phi-2: LayerNorm with bias, fc1/fc2, partial rotary
        return PhiConfig(**common)
    if family == "gemma2":
        return Gemma2Config(**common, head_dim=head_dim, sliding_window=16)
    if family == "gemma3":
        return Gemma3TextConfig(**common, head_dim=head_dim, sliding_window=16)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "phi3", "gemma2", "gemma3", "phi", "qwen3"]


def build_tiny(family: str, root: Path, hidden: int = 256, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random model of ``family`` with a tokenizer to ``root/family``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _config(family, hidden, layers)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        # random init is tiny (std 0.02); larger weights give outputs that quantization
        # visibly changes, and a few outlier input channels like real LLMs have
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
                if "proj" in name or "fc" in name or "dense" in name:
                    p[:, :2] *= 4.0
    path = root / family
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir(family)`` -> directory of a tiny model (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-models")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_tiny(family, root)
        return cache[family]

    return get


@pytest.fixture
def calib_json(tmp_path: Path) -> Path:
    """A small calibration dataset in Rockchip's JSON format."""
    data = [{"input": s[: len(s) // 2], "target": s[len(s) // 2 :]} for s in CORPUS * 2]
    p = tmp_path / "data_quant.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    return p
