"""GPTQ export: the files decode (by the documented layout) to exactly the built weights."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rkllm_core.errors import ExportError
from rkllm_core.toolkit import RKLLM, cli
from rkllm_core.toolkit.gptq_export import check_gptq_layers, gptq_tensors
from rkllm_core.toolkit.quant.formats import QuantDtype
from rkllm_core.toolkit.quant.qlinear import QuantLinear

GPTQ_KEYS = ("qweight", "qzeros", "scales", "g_idx")


# --------------------------------------------------------------------------- reference decoder
# Written from the format description alone (not from the exporter's packing code).


def unpack_words(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unsigned values of int32 words packed along ``dim``: value k of a word at bits k*bits."""
    w = words.to(torch.int64) & 0xFFFFFFFF  # the int32 holds a raw 32-bit word
    per_word = 32 // bits
    fields = [(w >> (k * bits)) & ((1 << bits) - 1) for k in range(per_word)]
    shape = list(words.shape)
    shape[dim] *= per_word
    return torch.stack(fields, dim=dim + 1).reshape(shape)


def dequantize(t: dict[str, torch.Tensor], name: str, bits: int) -> torch.Tensor:
    """w [out, in] = scales[g_idx[i], o] * (u[i, o] - (zero[g_idx[i], o] + 1))."""
    u = unpack_words(t[f"{name}.qweight"], bits, 0)  # [in, out]
    zero = unpack_words(t[f"{name}.qzeros"], bits, 1) + 1  # [n_groups, out]
    g = t[f"{name}.g_idx"].long()
    scales = t[f"{name}.scales"].float()
    return (scales[g] * (u - zero[g]).float()).t()


# --------------------------------------------------------------------------- packing by hand


def test_packing_of_a_known_row_by_hand() -> None:
    # one 4-bit output row over 8 inputs: q = -8 -7 -1 0 1 2 6 7 -> u = q + 8 = 0 1 7 8 9 10 14 15
    # input i sits in nibble i (lowest first), so the word reads 0xFEA98710 from the top nibble;
    # as int32 that is 0xFEA98710 - 2**32 = -22444272. The other 7 rows are zeros: u = 8 in
    # every nibble = 0x88888888 = -2004318072. Every zero word is 7 per nibble = 0x77777777.
    q = torch.zeros(8, 8, dtype=torch.int8)
    q[0] = torch.tensor([-8, -7, -1, 0, 1, 2, 6, 7])
    layer = QuantLinear.from_quantized(q, torch.ones(8, 1, dtype=torch.float16), "w4a16")
    t = gptq_tensors(layer, 4)
    assert t["qweight"].dtype == torch.int32 and t["qweight"].shape == (1, 8)
    assert t["qweight"].tolist() == [[-22444272] + [-2004318072] * 7]
    assert t["qzeros"].tolist() == [[0x77777777]] and t["qzeros"].dtype == torch.int32
    assert t["g_idx"].tolist() == [0] * 8 and t["g_idx"].dtype == torch.int32
    assert t["scales"].shape == (1, 8) and t["scales"].dtype == torch.float16

    # 8-bit, 4 inputs: q = -127 0 1 127 -> u = q + 128 = 0x01 0x80 0x81 0xFF -> 0xFF818001,
    # as int32 -8290303; the zero word is 127 per byte = 0x7F7F7F7F = 2139062143
    q8 = torch.zeros(4, 4, dtype=torch.int8)
    q8[0] = torch.tensor([-127, 0, 1, 127])
    layer8 = QuantLinear.from_quantized(q8, torch.ones(4, 1), "w8a8", act_mode="dynamic")
    t8 = gptq_tensors(layer8, 8)
    assert t8["qweight"].tolist() == [[-8290303] + [-2139062144] * 3]  # 0x80808080
    assert t8["qzeros"].tolist() == [[0x7F7F7F7F]]


def test_grouped_layout_and_scales_transpose() -> None:
    torch.manual_seed(0)
    q = torch.randint(-8, 8, (16, 64), dtype=torch.int8)
    s = (torch.rand(16, 2) + 0.5).to(torch.float16)
    layer = QuantLinear.from_quantized(q, s, "w4a16_g32", bias=torch.arange(16.0))
    t = {f"x.{k}": v for k, v in gptq_tensors(layer, 4).items()}
    assert t["x.qweight"].shape == (8, 16) and t["x.qzeros"].shape == (2, 2)
    assert t["x.g_idx"].tolist() == [0] * 32 + [1] * 32
    assert torch.equal(t["x.scales"], s.t())
    assert torch.equal(dequantize(t, "x", 4), layer.weight)
    assert torch.equal(t["x.bias"], torch.arange(16.0).half())


# --------------------------------------------------------------------------- full exports

# (family, dtype, platform, optimization_level, activation mode); level 1 runs GPTQ and, for
# a8 dtypes, SmoothQuant, whose folded norms must travel with the weights
CASES = [
    ("llama", "w4a16", "rk3576", 0, "static"),
    ("llama", "w4a16_g32", "rk3576", 1, "static"),
    ("llama", "w8a8_g128", "rk3588", 0, "static"),
    ("llama", "w8a8", "rk3588", 0, "static"),
    ("qwen2", "w4a16", "rk3576", 0, "static"),
    ("qwen2", "w4a16_g32", "rk3576", 0, "static"),
    ("qwen2", "w8a8_g128", "rk3588", 1, "static"),
    ("qwen2", "w8a8", "rk3588", 0, "dynamic"),
]


def _build(model_dir: Path, dtype: str, platform: str, level: int, act: str, calib: Path):
    llm = RKLLM(strict=True)
    assert llm.load_huggingface(str(model_dir)) == 0
    ret = llm.build(
        optimization_level=level,
        quantized_dtype=dtype,
        target_platform=platform,
        num_npu_core=1,
        dataset=str(calib),
        activation_mode=act,
    )
    assert ret == 0
    return llm


@pytest.mark.parametrize(("family", "dtype", "platform", "level", "act"), CASES)
def test_gptq_export_decodes_to_the_built_weights(
    tiny_model_dir: Callable[[str], Path],
    calib_json: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    family: str,
    dtype: str,
    platform: str,
    level: int,
    act: str,
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    llm = _build(tiny_model_dir(family), dtype, platform, level, act, calib_json)
    built = llm.model
    out = tmp_path / f"{family}-{dtype}-gptq"
    assert llm.export_gptq(str(out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data_quant.json") == [out.name]

    bits = 4 if dtype.startswith("w4") else 8
    group = 32 if dtype.endswith("_g32") else 128 if dtype.endswith("_g128") else None
    tensors = load_file(str(out / "model.safetensors"))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt"  # transformers refuses any other value

    quant = {n: m for n, m in built.named_modules() if isinstance(m, QuantLinear)}
    assert quant
    for name, mod in quant.items():
        pack = 32 // bits
        n_groups = 1 if group is None else mod.in_features // group
        qw, qz = tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"]
        assert qw.dtype == qz.dtype == tensors[f"{name}.g_idx"].dtype == torch.int32
        assert qw.shape == (mod.in_features // pack, mod.out_features)
        assert qz.shape == (n_groups, mod.out_features // pack)
        assert tensors[f"{name}.scales"].shape == (n_groups, mod.out_features)
        assert tensors[f"{name}.scales"].dtype == torch.float16
        expect_g = [i // (group or mod.in_features) for i in range(mod.in_features)]
        assert tensors[f"{name}.g_idx"].tolist() == expect_g
        # symmetric: every zero point is 2^(bits-1), stored minus one
        assert bool((unpack_words(qz, bits, 1) == 2 ** (bits - 1) - 1).all())
        assert torch.equal(dequantize(tensors, name, bits), mod.weight), name
        if mod.bias is not None:
            b = tensors[f"{name}.bias"]
            assert b.dtype == torch.float16 and torch.equal(b.float(), mod.bias.float())
        assert f"{name}.weight" not in tensors and f"{name}.act_scale" not in tensors
    if family == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in tensors

    # every other parameter in fp16 under its own name, equal to the built model's
    prefixes = tuple(n + "." for n in quant)
    state = {k: v for k, v in built.state_dict().items() if not k.startswith(prefixes)}
    assert "lm_head.weight" in state  # the head stays unquantized
    for key, value in state.items():
        assert tensors[key].dtype == torch.float16, key
        assert torch.equal(tensors[key].float(), value.float()), key
    gptq_keys = {f"{n}.{k}" for n in quant for k in GPTQ_KEYS}
    bias_keys = {f"{n}.bias" for n, m in quant.items() if m.bias is not None}
    assert set(tensors) == set(state) | gptq_keys | bias_keys

    expect_q = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group if group is not None else -1,
        "desc_act": False,
        "sym": True,
        "static_groups": False,
        "true_sequential": True,
        "damp_percent": 0.01,
        "checkpoint_format": "gptq",
    }
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == expect_q and cfg["torch_dtype"] == "float16"
    qcfg = json.loads((out / "quantize_config.json").read_text())
    assert {k: qcfg[k] for k in expect_q} == expect_q
    assert (out / "generation_config.json").is_file()

    from transformers import AutoTokenizer, GPTQConfig

    assert GPTQConfig.from_dict(dict(cfg["quantization_config"])).bits == bits
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == llm.tokenizer.chat_template

    scales_file = out / "rkllm_activation_scales.json"
    if dtype.startswith("w8a8"):
        assert "recalibrates" in caplog.text
        data = json.loads(scales_file.read_text())
        assert data["activation_mode"] == act and data["quantized_dtype"] == dtype
        if act == "static":
            assert data["layers"] == {n: float(m.act_scale) for n, m in quant.items()}
        else:
            assert data["layers"] == {}
    else:
        assert not scales_file.exists()


def test_dequantized_checkpoint_runs_like_the_build(
    tiny_model_dir: Callable[[str], Path], calib_json: Path, tmp_path: Path
) -> None:
    """A consumer that dequantizes the checkpoint into a plain model gets the build's logits."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    llm = _build(tiny_model_dir("qwen2"), "w4a16_g32", "rk3576", 0, "static", calib_json)
    out = tmp_path / "q-gptq"
    llm.export_gptq(out)
    tensors = load_file(str(out / "model.safetensors"))
    config = AutoConfig.from_pretrained(out)
    del config.quantization_config  # we dequantize by hand below: no GPTQ backend needed
    model = AutoModelForCausalLM.from_config(config).float().eval()
    state = {}
    for key in list(tensors):
        if key.endswith(".qweight"):
            name = key[: -len(".qweight")]
            state[f"{name}.weight"] = dequantize(tensors, name, 4)
            for k in GPTQ_KEYS:
                tensors.pop(f"{name}.{k}")
    state.update({k: v.float() for k, v in tensors.items()})
    model.load_state_dict(state, strict=True)
    ids = llm.tokenizer("The quick brown fox jumps", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = model(input_ids=ids).logits
    want = llm.get_logits({"input_ids": ids})
    # the build rounds activations to fp16 before each quantized matmul; the plain model not
    assert torch.allclose(got, want, atol=2e-2, rtol=1e-2), float((got - want).abs().max())


# --------------------------------------------------------------------------- refusals


def test_refuses_without_a_quantized_build(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    with pytest.raises(ExportError, match=r"call build\(\) first"):
        llm.export_gptq(tmp_path / "a")
    llm.build(do_quantization=False)
    with pytest.raises(ExportError, match="do_quantization=True"):
        llm.export_gptq(tmp_path / "b")
    llm.strict = False
    assert llm.export_gptq(tmp_path / "c") == -1
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_directory_and_leaves_it_alone(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w4a16", target_platform="rk3576",
              num_npu_core=1)  # fmt: skip
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="not an empty directory"):
        llm.export_gptq(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    # an existing empty directory is fine, and a second export to it is refused
    empty = tmp_path / "empty"
    empty.mkdir()
    assert llm.export_gptq(empty) == 0 and (empty / "model.safetensors").is_file()
    with pytest.raises(ExportError, match="refusing to overwrite"):
        llm.export_gptq(empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine"]


def test_failure_midway_leaves_nothing(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = RKLLM()
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w4a16", target_platform="rk3576",
              num_npu_core=1)  # fmt: skip

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(llm.tokenizer, "save_pretrained", boom)
    assert llm.export_gptq(tmp_path / "z") == -1
    assert list(tmp_path.iterdir()) == []


def test_refuses_hybrid_group_sizes(
    tiny_model_dir: Callable[[str], Path], calib_json: Path, tmp_path: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w4a16", target_platform="rk3576",
              num_npu_core=1, hybrid_rate=0.5, dataset=str(calib_json))  # fmt: skip
    assert llm.manifest["hybrid_layers"]
    with pytest.raises(ExportError, match="hybrid_rate=0"):
        llm.export_gptq(tmp_path / "h")
    assert list(tmp_path.iterdir()) == [calib_json]


def _layer(dtype: QuantDtype | str, n: int = 256) -> QuantLinear:
    return QuantLinear(n, n, dtype)


def test_layer_checks() -> None:
    # one shared dtype is fine even if the build was hybrid in name
    assert check_gptq_layers({"a": _layer("w4a16_g64"), "b": _layer("w4a16_g64")}) == (4, 64)
    assert check_gptq_layers({"a": _layer("w8a8")}) == (8, None)
    assert check_gptq_layers({"a": _layer("w4a8_g32")}) == (4, 32)
    with pytest.raises(ExportError, match="mixes"):
        check_gptq_layers({"a": _layer("w4a16_g64"), "b": _layer("w4a16")})
    # 8-bit group 64 is not among the GPTQ layouts Rockchip accepts (nor one of our dtypes)
    with pytest.raises(ExportError, match="Rockchip's toolkit accepts"):
        check_gptq_layers({"a": _layer(QuantDtype("w8a8_g64", 8, 8, 64))})
    with pytest.raises(ExportError, match="no quantized layers"):
        check_gptq_layers({})
    with pytest.raises(ExportError, match="multiple of 8"):
        check_gptq_layers({"a": QuantLinear(256, 12, "w4a16")})


# --------------------------------------------------------------------------- CLI


def test_cli_convert_format_gptq(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "tiny-gptq"
    args = parser.parse_args(
        ["convert", str(tiny_model_dir("llama")), "-o", str(out), "--format", "gptq",
         "--dtype", "w4a16_g32", "--platform", "rk3576", "--optimization-level", "0"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "exported" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["group_size"] == 32
    assert parser.parse_args(["convert", "m", "-o", "x"]).format == "rkllm-pc"
