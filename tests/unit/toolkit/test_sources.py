"""Loading sources: GGUF files written with the gguf library, LoRA directories."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from rkllm_core.toolkit import RKLLM

HIDDEN, FF, VOCAB = 64, 128, 384


def _write_gguf(path: Path, qtype: str, tok_dir: Path) -> dict[str, np.ndarray]:
    """A 1-layer Llama GGUF whose 2-D weights are stored as ``qtype`` (Q4_0 or F16)."""
    import gguf
    from transformers import AutoTokenizer

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(1)
    w.add_feed_forward_length(FF)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(HIDDEN // 4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q4_0 if qtype == "Q4_0" else gguf.LlamaFileType.MOSTLY_F16
    )
    tok = AutoTokenizer.from_pretrained(tok_dir)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens += [f"<unused{i}>" for i in range(VOCAB - len(tokens))]  # match the tensors
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    merges = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    shapes = {
        "token_embd.weight": (VOCAB, HIDDEN),
        "output.weight": (VOCAB, HIDDEN),
        "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_k.weight": (HIDDEN // 2, HIDDEN),
        "blk.0.attn_v.weight": (HIDDEN // 2, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
        "blk.0.ffn_gate.weight": (FF, HIDDEN),
        "blk.0.ffn_up.weight": (FF, HIDDEN),
        "blk.0.ffn_down.weight": (HIDDEN, FF),
    }
    expected: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if qtype == "Q4_0" and "token_embd" not in name:
            from gguf.quants import dequantize, quantize

            packed = quantize(data, gguf.GGMLQuantizationType.Q4_0)
            w.add_tensor(name, packed, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            expected[name] = dequantize(packed, gguf.GGMLQuantizationType.Q4_0).reshape(shape)
        else:
            w.add_tensor(name, data.astype(np.float16))
            expected[name] = data.astype(np.float16).astype(np.float32)
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        data = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        w.add_tensor(name, data)
        expected[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.mark.parametrize("qtype", ["Q4_0", "F16"])
def test_gguf_loads_with_the_right_values(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, qtype: str
) -> None:
    path = tmp_path / f"tiny-{qtype}.gguf"
    expected = _write_gguf(path, qtype, tiny_model_dir("llama"))
    llm = RKLLM(strict=True)
    assert llm.load_gguf(str(path)) == 0
    src = llm.manifest or llm._source
    assert src["gguf_tensor_type"] == qtype
    assert src["gguf_equivalent_dtype"] == ("w4a16_g32" if qtype == "Q4_0" else None)
    m = llm.model
    # llama.cpp permutes q/k for its rope layout; transformers undoes it, so compare the
    # others directly and q/k as sets of rows
    pairs = {
        "blk.0.attn_v.weight": m.model.layers[0].self_attn.v_proj.weight,
        "blk.0.ffn_down.weight": m.model.layers[0].mlp.down_proj.weight,
        "blk.0.ffn_gate.weight": m.model.layers[0].mlp.gate_proj.weight,
        "output.weight": m.lm_head.weight,
        "token_embd.weight": m.model.embed_tokens.weight,
        "output_norm.weight": m.model.norm.weight,
    }
    for name, tensor in pairs.items():
        np.testing.assert_allclose(tensor.detach().numpy(), expected[name], rtol=0, atol=1e-6)
    q = m.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_allclose(
        np.sort(q, axis=None), np.sort(expected["blk.0.attn_q.weight"], axis=None), atol=1e-6
    )
    if qtype == "Q4_0":
        # q4_0 = w4a16_g32: every 32-block of a weight row holds at most 16 distinct levels
        blocks = pairs["blk.0.ffn_down.weight"].detach().reshape(-1, 32)
        assert max(len(torch.unique(b)) for b in blocks) <= 16
    assert llm.build(optimization_level=0, quantized_dtype="w4a16_g32",
                     target_platform="rk3576", num_npu_core=1) == 0  # fmt: skip
    assert llm.manifest["source"]["gguf_tensor_type"] == qtype


def test_lora_merge(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = tiny_model_dir("llama")
    lora = tmp_path / "lora"
    lora.mkdir()
    r, alpha = 4, 8
    (lora / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "base_model_name_or_path": "x"}
        )
    )
    g = torch.Generator().manual_seed(0)
    name = "model.layers.0.self_attn.q_proj"
    a = torch.randn(r, 256, generator=g)
    b = torch.randn(256, r, generator=g)
    save_file(
        {f"base_model.model.{name}.lora_A.weight": a, f"base_model.model.{name}.lora_B.weight": b},
        str(lora / "adapter_model.safetensors"),
    )
    plain, merged = RKLLM(strict=True), RKLLM(strict=True)
    plain.load_huggingface(str(base))
    merged.load_huggingface(str(base), model_lora=str(lora))
    w0 = plain.model.get_submodule(name).weight
    w1 = merged.model.get_submodule(name).weight
    assert torch.allclose(w1 - w0, (b @ a) * (alpha / r), atol=1e-5)
    assert merged._source["lora"] == str(lora.absolute())
    # an adapter for another architecture is refused
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"r": r}))
    save_file(
        {"base_model.model.nope.lora_A.weight": a, "base_model.model.nope.lora_B.weight": b},
        str(bad / "adapter_model.safetensors"),
    )
    assert RKLLM().load_huggingface(str(base), model_lora=str(bad)) == -1
