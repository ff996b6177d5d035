"""build(extra_qparams=...) reuses the quantization parameters of an earlier rkllm-py export."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rkllm_core.errors import BuildConfigError
from rkllm_core.toolkit import RKLLM
from rkllm_core.toolkit.export import MANIFEST, load_export
from rkllm_core.toolkit.quant import pipeline
from rkllm_core.toolkit.quant.qlinear import QuantLinear

PROMPT = "Calibration data decides the activation ranges of every linear layer."


@pytest.fixture(scope="module")
def first_export(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A level-1 (GPTQ + SmoothQuant) static w8a8 export of the tiny Llama for RK3588."""
    data = tmp_path_factory.mktemp("calib") / "d.json"
    text = "The quick brown fox jumps over the lazy dog. def add(a, b): return a + b"
    data.write_text(json.dumps([{"input": text, "target": ""}] * 3))
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=1, quantized_dtype="w8a8", target_platform="rk3588",
              num_npu_core=3, dataset=str(data), max_context=4096)  # fmt: skip
    out = tmp_path_factory.mktemp("first") / "m.rkllm-pc"
    llm.export_rkllm(str(out))
    return out


def _logits(model: torch.nn.Module, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tok(PROMPT, return_tensors="pt")["input_ids"]).logits


def test_reused_parameters_rebuild_the_same_model_without_calibrating(
    tiny_model_dir: Callable[[str], Path],
    first_export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_quantization(*_a, **_k):
        raise AssertionError("a build with extra_qparams must not calibrate or quantize")

    monkeypatch.setattr(pipeline, "quantize_model", no_quantization)
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    # re-export for another platform and context length, as Rockchip's scripts do with qparams
    assert llm.build(optimization_level=1, quantized_dtype="w8a8", target_platform="rk3576",
                     num_npu_core=2, extra_qparams=str(first_export),
                     max_context=8192) == 0  # fmt: skip
    out = tmp_path / "again.rkllm-pc"
    assert llm.export_rkllm(str(out)) == 0

    old_model, tok = load_export(first_export)
    new_model, _ = load_export(out)
    assert torch.equal(_logits(new_model, tok), _logits(old_model, tok))
    assert torch.equal(llm.get_logits({"input_ids": tok(PROMPT, return_tensors="pt")["input_ids"]}),
                       _logits(old_model, tok))  # fmt: skip
    old = json.loads((first_export / MANIFEST).read_text())
    new = json.loads((out / MANIFEST).read_text())
    assert new["target_platform"] == "RK3576" and new["max_context"] == 8192
    assert new["qparams_from"] == str(first_export.absolute())
    # how the numbers were found travels with them
    assert new["calibration"] == old["calibration"] and new["calibration"]["samples"] == 3
    assert new["optimizations"] == old["optimizations"] == ["gptq", "smoothquant"]
    assert new["layers"] == old["layers"]


def test_static_parameters_can_run_with_dynamic_activations(
    tiny_model_dir: Callable[[str], Path], first_export: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(quantized_dtype="w8a8", extra_qparams=first_export, activation_mode="dynamic")
    layers = [m for m in llm.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.act_mode == "dynamic" and m.act_scale is None for m in layers)
    old_model, _ = load_export(first_export)
    old = {n: m for n, m in old_model.named_modules() if isinstance(m, QuantLinear)}
    for name, mod in llm.model.named_modules():
        if isinstance(mod, QuantLinear):
            assert torch.equal(mod.qweight, old[name].qweight)
    assert llm._manifest["activation_mode"] == "dynamic"


@pytest.mark.parametrize(
    ("family", "kwargs", "message"),
    [
        ("llama", {"quantized_dtype": "w8a8_g128"}, "holds w8a8 parameters"),
        ("llama", {"hybrid_rate": 0.5}, "hybrid_rate"),
        ("llama", {"do_quantization": False}, "do_quantization=True"),
        ("qwen2", {}, "another model"),
    ],
)
def test_parameters_that_do_not_fit_are_refused(
    tiny_model_dir: Callable[[str], Path],
    first_export: Path,
    family: str,
    kwargs: dict,
    message: str,
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir(family)))
    args = {"quantized_dtype": "w8a8", "extra_qparams": str(first_export), **kwargs}
    with pytest.raises(BuildConfigError, match=message):
        llm.build(**args)
    assert llm._built is None


def test_dynamic_export_cannot_supply_static_scales(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w8a8", activation_mode="dynamic")
    dyn = tmp_path / "dyn.rkllm-pc"
    llm.export_rkllm(str(dyn))
    with pytest.raises(BuildConfigError, match="no calibrated activation scales"):
        llm.build(quantized_dtype="w8a8", extra_qparams=str(dyn))


def test_rockchip_qparams_file_is_refused_with_the_fix(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    cache = tmp_path / "model.qparams"
    cache.write_bytes(b"\x00" * 64)
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    with pytest.raises(BuildConfigError, match=r"not an rkllm-py export.*export_rkllm"):
        llm.build(extra_qparams=str(cache))
    with pytest.raises(BuildConfigError, match="does not exist"):
        llm.build(extra_qparams=str(tmp_path / "missing.rkllm-pc"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.qparams"]


def test_model_loaded_without_weights_cannot_be_matched(
    tiny_model_dir: Callable[[str], Path], first_export: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")), load_weight=False)
    with pytest.raises(BuildConfigError, match="load_weight=False"):
        llm.build(quantized_dtype="w8a8", extra_qparams=str(first_export))
