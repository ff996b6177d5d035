"""``rkllm convert`` and ``rkllm eval`` (through the toolkit's register())."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rkllm_core.toolkit import cli
from rkllm_core.toolkit.evaluate import QuantConfig
from rkllm_core.toolkit.export import is_export

from .conftest import CORPUS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="cmd"))
    return p


def test_convert_writes_an_export(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.rkllm-pc"
    args = _parser().parse_args(
        ["convert", str(tiny_model_dir("llama")), "-o", str(out), "--dtype", "w4a16_g32",
         "--platform", "rk3576", "--optimization-level", "0"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert is_export(out) and "exported" in capsys.readouterr().out


def test_convert_reuses_an_export_as_gptq(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from safetensors.torch import load_file

    from rkllm_core.toolkit.export import load_export
    from rkllm_core.toolkit.quant import pipeline
    from rkllm_core.toolkit.quant.qlinear import QuantLinear

    first = tmp_path / "first.rkllm-pc"
    parser = _parser()
    args = parser.parse_args(
        ["convert", str(tiny_model_dir("llama")), "-o", str(first), "--dtype", "w4a16_g32",
         "--platform", "rk3576", "--optimization-level", "1"]
    )  # fmt: skip
    assert args.func(args) == 0

    def no_quantization(*_a: object, **_k: object) -> None:
        raise AssertionError("--qparams must not quantize again")

    monkeypatch.setattr(pipeline, "quantize_model", no_quantization)
    gptq = tmp_path / "gptq"
    args = parser.parse_args(
        ["convert", str(tiny_model_dir("llama")), "-o", str(gptq), "--format", "gptq",
         "--dtype", "w4a16_g32", "--platform", "rk3576", "--qparams", str(first)]
    )  # fmt: skip
    assert args.func(args) == 0
    config = json.loads((gptq / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 32
    # the GPTQ checkpoint holds the first build's scales
    model, _ = load_export(first)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    stored = load_file(str(next(gptq.glob("*.safetensors"))))
    name = next(iter(layers))
    scales = stored[f"{name}.scales"]  # [groups, out]
    assert torch.equal(scales, layers[name].scales.t().to(scales.dtype))


def test_eval_prints_a_table(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(CORPUS * 60))
    args = _parser().parse_args(
        ["eval", str(tiny_model_dir("llama")), "--corpus", str(text), "--calib-corpus",
         str(text), "--windows", "2", "--calib-samples", "2", "--configs", "float",
         "w8a8:normal:dynamic", "w4a16_g32:percentile", "w8a8_g512"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| float |" in out and "w4a16_g32 (percentile)" in out
    assert "group size 512" in out  # a config the model cannot take says why
    ppl = next(line for line in out.splitlines() if line.startswith("| float"))
    assert float(ppl.split("|")[4]) > 1.0


def test_quant_config_parsing() -> None:
    c = QuantConfig.parse("W8A8:kl_divergence:dynamic:opt")
    assert (c.dtype, c.algorithm, c.activation_mode, c.optimization_level) == (
        "w8a8", "kl_divergence", "dynamic", 1,
    )  # fmt: skip
    assert QuantConfig.parse("float").dtype is None
    assert c.platform() == ("rk3588", 3)
    assert QuantConfig.parse("w8a8:per-token:opt").activation_mode == "per_token"
