"""The PC engine loads GGUF files of every common tensor type with the right values.

The files are written here with the gguf library from a tiny random Llama, the way
llama.cpp's converter lays them out (Q/K rows permuted for rotary embeddings), so the test
checks the real loading path end to end: dequantized weights must equal what the gguf
library's own dequantizer gives, and logits must match the float source model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from rkllm_core import RKLLMModel, RuntimeConfig  # noqa: E402


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores Q/K with the rotary halves interleaved
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_llama_gguf(hf_dir: Path, out: Path, qtype: str) -> dict[str, np.ndarray]:
    """Write the HF Llama in ``hf_dir`` as GGUF with 2-D weights in ``qtype``.

    Returns the float weights as stored (after permutation), by GGUF tensor name.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    cfg = model.config
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    special = set(tok.all_special_ids)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    merges = tok.backend_tokenizer.to_str()
    import json

    model_json = json.loads(merges)["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model_json])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    stored: dict[str, np.ndarray] = {}
    tensors = [("token_embd.weight", sd["model.embed_tokens.weight"]),
               ("output_norm.weight", sd["model.norm.weight"]),
               ("output.weight", sd["lm_head.weight"])]
    for layer in range(cfg.num_hidden_layers):
        for hf_name, gg_name in names.items():
            w = sd[f"model.layers.{layer}.{hf_name}.weight"]
            if gg_name == "attn_q":
                w = _permute(w, cfg.num_attention_heads)
            elif gg_name == "attn_k":
                w = _permute(w, cfg.num_key_value_heads)
            tensors.append((f"blk.{layer}.{gg_name}.weight", w))
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    for name, w in tensors:
        stored[name] = w
        if w.ndim == 2 and qtype not in ("F32",):
            data = gguf.quants.quantize(w, kind) if qtype != "F16" else w.astype(np.float16)
            writer.add_tensor(name, data, raw_dtype=kind)
        else:
            writer.add_tensor(name, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


# (type, min cosine between GGUF and float logits)
CASES = [("F32", 0.99999), ("F16", 0.9999), ("Q8_0", 0.999), ("Q5_0", 0.98),
         ("Q4_1", 0.97), ("Q4_0", 0.95)]


@pytest.mark.parametrize(("qtype", "min_cosine"), CASES)
def test_gguf_types_load_with_the_right_values(
    tiny_model_dir: Path, tmp_path: Path, qtype: str, min_cosine: float
) -> None:
    path = tmp_path / f"tiny-{qtype}.gguf"
    stored = write_llama_gguf(tiny_model_dir, path, qtype)
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    cfg = RuntimeConfig(max_context_len=128)
    with RKLLMModel(path, cfg) as gg, RKLLMModel(tiny_model_dir, cfg) as ref:
        assert gg.info.quantization == qtype
        assert gg.info.extra["source_format"] == "gguf"
        loaded = gg._engine._model.model.layers[1].mlp.down_proj.weight.detach().numpy()
        source = stored["blk.1.ffn_down.weight"]
        if qtype == "F32":
            expected = source
        elif qtype == "F16":
            expected = source.astype(np.float16).astype(np.float32)
        else:
            expected = gguf.quants.dequantize(gguf.quants.quantize(source, kind), kind)
        np.testing.assert_array_equal(loaded, expected)
        text = "The quick brown fox jumps over the lazy dog."
        a, b = gg.logits(text), ref.logits(text)
        assert a.shape == b.shape
        cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos >= min_cosine
        assert gg.tokenize(text) == ref.tokenize(text)


_KILLED_CONVERSION = """
import sys, time
import safetensors.torch
def stalled_save(model, filename, metadata=None):
    open(filename, "wb").write(b"half a file")
    print("saving", flush=True)
    time.sleep(600)
safetensors.torch.save_model = stalled_save
from rkllm_core.pc.loading import load_pretrained
load_pretrained(sys.argv[1])
"""


def test_kill_9_during_conversion_then_clean_rerun_and_corrupt_cache_rebuilt(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from rkllm_core.cache import STAGING_PREFIX
    from rkllm_core.pc.loading import load_pretrained

    path = tmp_path / "tiny-F32.gguf"
    write_llama_gguf(tiny_model_dir, path, "F32")
    cache = tmp_path / "cache"
    monkeypatch.setenv("RKLLM_CACHE_DIR", str(cache))
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CONVERSION, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "saving"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    converted = cache / "converted"
    assert list(converted.glob(STAGING_PREFIX + "*"))  # what kill -9 leaves behind
    assert not [p for p in converted.iterdir() if not p.name.startswith(".")]

    loaded = load_pretrained(path)  # converts again, and removes the dead process's folder
    assert loaded.source_format == "gguf"
    assert not list(cache.rglob(STAGING_PREFIX + "*"))
    (copy,) = [p for p in converted.iterdir()]
    weights = copy / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:  # a truncated copy (disk full, crash of another tool)
        f.truncate(size // 2)
    again = load_pretrained(path)
    assert weights.stat().st_size == size  # rebuilt
    import torch

    a = loaded.model.model.layers[0].mlp.up_proj.weight
    b = again.model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(a, b)
