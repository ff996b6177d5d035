"""quantize -> export -> load -> logits equal the in-memory simulation, per model family."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rkllm_core.errors import ExportError
from rkllm_core.toolkit import RKLLM
from rkllm_core.toolkit.export import MANIFEST, is_export, load_export
from rkllm_core.toolkit.quant.formats import parse_dtype, unpack_int4
from rkllm_core.toolkit.quant.qlinear import QuantLinear

PROMPT = "The quick brown fox jumps over the lazy dog. def add(a, b): return a + b"

# (family, dtype, platform, optimization_level, activation mode): every family is covered
# once with an a8 dtype and once with a w4 dtype; level 1 exercises GPTQ and SmoothQuant
CASES = [
    ("llama", "w8a8", "rk3588", 1, "static"),
    ("llama", "w4a16_g32", "rk3576", 0, "static"),
    ("qwen2", "w8a8_g128", "rk3588", 0, "static"),
    ("qwen2", "w4a16_g64", "rk3576", 1, "static"),
    ("phi3", "w8a8", "rk3588", 0, "dynamic"),
    ("phi3", "w4a16", "rv1126b", 1, "static"),
    ("gemma2", "w8a8", "rk3576", 1, "static"),
    ("gemma2", "w4a16_g128", "rk3576", 1, "static"),
    ("gemma3", "w4a8_g32", "rk3562", 1, "static"),
    ("gemma3", "w8a8_g128", "rk3588", 0, "dynamic"),
    ("llama", "w8a8_g128", "rk3588", 1, "per_token"),
    ("phi", "w8a8", "rk3588", 1, "static"),
    ("qwen3", "w4a16_g32", "rk3562", 1, "static"),
]


def _ids(tok) -> torch.Tensor:
    return tok(PROMPT, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize(("family", "dtype", "platform", "level", "act"), CASES)
def test_export_reproduces_simulation_exactly(
    tiny_model_dir: Callable[[str], Path],
    calib_json: Path,
    tmp_path: Path,
    family: str,
    dtype: str,
    platform: str,
    level: int,
    act: str,
) -> None:
    llm = RKLLM(strict=True)
    assert llm.load_huggingface(str(tiny_model_dir(family))) == 0
    ids = _ids(llm.tokenizer)
    float_logits = llm.get_logits({"input_ids": ids})
    cores = 1
    ret = llm.build(
        optimization_level=level,
        quantized_dtype=dtype,
        target_platform=platform,
        num_npu_core=cores,
        dataset=str(calib_json),
        activation_mode=act,
    )
    assert ret == 0
    sim = llm.get_logits({"input_ids": ids})
    # quantization changed something, but not everything (4-bit per-channel on random weights
    # with outlier columns is very lossy)
    rel = float((sim - float_logits).norm() / float_logits.norm())
    assert 1e-4 < rel < (1.5 if dtype == "w4a16" else 0.5), rel

    out = tmp_path / f"{family}.rkllm-pc"
    assert llm.export_rkllm(str(out)) == 0
    assert is_export(out)
    model, tok = load_export(out)
    assert not model.training
    with torch.no_grad():
        loaded = model(input_ids=_ids(tok)).logits
    assert torch.equal(loaded, sim), float((loaded - sim).abs().max())

    manifest = json.loads((out / MANIFEST).read_text())
    dt = parse_dtype(dtype)
    assert manifest["quantized_dtype"] == dtype
    assert manifest["group_size"] == dt.group_size
    assert manifest["target_platform"] == platform.upper()
    assert manifest["source"]["sha256"] and len(manifest["source"]["sha256"]) == 64
    calibrated = level == 1 or (dt.act_bits is not None and act == "static")
    assert (manifest["calibration"]["samples"] > 0) == calibrated
    assert model.rkllm_manifest["quantized_dtype"] == dtype
    quant = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(quant) == len(manifest["layers"]) > 0
    if dt.act_bits and act == "static":
        assert all(m.act_scale is not None and float(m.act_scale) > 0 for m in quant)
    # tokenizer and chat template travel with the export
    assert tok.chat_template == llm.tokenizer.chat_template


def test_export_tensors_are_the_specified_integers(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w4a16_g32", target_platform="rk3576",
              num_npu_core=1)  # fmt: skip
    out = tmp_path / "m.rkllm-pc"
    llm.export_rkllm(str(out))
    tensors = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    packed, scales = tensors[f"{name}.qweight"], tensors[f"{name}.scales"]
    assert packed.dtype == torch.uint8 and scales.dtype == torch.float16
    q = unpack_int4(packed)
    assert q.shape[1] == 2 * packed.shape[1] and scales.shape == (q.shape[0], q.shape[1] // 32)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    # level 0 = round to nearest of the source weight, s = max|block| / 7 in fp16
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).get_submodule(name)
    w = src.weight.detach().to(torch.float16).float()
    expect_s = (w.reshape(w.shape[0], -1, 32).abs().amax(-1) / 7).to(torch.float16)
    assert torch.equal(scales, expect_s)
    expect_q = torch.clamp(
        torch.round(w.reshape(w.shape[0], -1, 32) / expect_s.float().unsqueeze(-1)), -8, 7
    ).reshape(w.shape)
    assert torch.equal(q.float(), expect_q)
    # float parameters are stored in fp16; tied / untied heads load identically
    assert tensors["model.norm.weight"].dtype == torch.float16


def test_gemma_tied_head_stored_once(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("gemma2")))
    llm.build(optimization_level=0, quantized_dtype="w4a16", target_platform="rk3576",
              num_npu_core=1)  # fmt: skip
    out = tmp_path / "g.rkllm-pc"
    llm.export_rkllm(str(out))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))


def test_reexport_replaces_and_refuses_foreign_dirs(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    llm = RKLLM()
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w8a8", dataset=None)
    out = tmp_path / "x.rkllm-pc"
    assert llm.export_rkllm(str(out)) == 0
    llm.build(optimization_level=0, quantized_dtype="w8a8_g128")
    assert llm.export_rkllm(str(out)) == 0
    assert json.loads((out / MANIFEST).read_text())["quantized_dtype"] == "w8a8_g128"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    assert llm.export_rkllm(str(foreign)) == -1
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    # nothing temporary is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "x.rkllm-pc"]


def test_rkllm_path_is_refused_without_rockchip_toolkit(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm = RKLLM()
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w8a8")
    target = tmp_path / "model_w8a8_rk3588.rkllm"
    assert llm.export_rkllm(str(target)) == -1
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert ".rkllm-pc" in caplog.text and "rkllm-toolkit" in caplog.text
    llm.strict = True
    with pytest.raises(ExportError, match=r"\.rkllm-pc"):
        llm.export_rkllm(str(target))


def test_export_interrupted_leaves_nothing(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = RKLLM()
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w8a8")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(llm.tokenizer, "save_pretrained", boom)
    assert llm.export_rkllm(str(tmp_path / "y.rkllm-pc")) == -1
    assert list(tmp_path.iterdir()) == []


def test_no_quantization_exports_fp16(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("qwen2")))
    ref = llm.get_logits(PROMPT)
    llm.build(do_quantization=False, quantized_dtype="w8a8")
    sim = llm.get_logits(PROMPT)
    assert not torch.equal(sim, ref) and torch.allclose(sim, ref, atol=1e-2, rtol=1e-2)
    out = tmp_path / "f.rkllm-pc"
    llm.export_rkllm(str(out))
    model, tok = load_export(out)
    with torch.no_grad():
        assert torch.equal(model(**tok(PROMPT, return_tensors="pt")).logits, sim)


def test_chat_model_and_get_logits_inputs(tiny_model_dir: Callable[[str], Path]) -> None:
    llm = RKLLM()
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w8a8")
    text = llm.chat_model("Human: hi\nAssistant:", {"max_length": 5, "top_k": 1})
    assert isinstance(text, str)
    text2 = llm.chat_model([{"role": "user", "content": "hi"}], {"max_length": 3})
    assert isinstance(text2, str)
    assert llm.chat_model("hi", {"bogus": 1}) == -1
    ids = llm.tokenizer(PROMPT)["input_ids"]
    a = llm.get_logits({"input_ids": [ids]})
    b = llm.get_logits(torch.tensor(ids))
    c = llm.get_logits(PROMPT)
    assert torch.equal(a, b) and a.shape == (1, len(ids), llm.model.config.vocab_size)
    assert c.shape[1] >= len(ids)
    assert llm.get_logits({"tokens": ids}) is None
