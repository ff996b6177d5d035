"""GPTQ, SmoothQuant and hybrid_rate do what they promise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from rkllm_core.toolkit import RKLLM
from rkllm_core.toolkit.quant.formats import dequantize_weight, parse_dtype, quantize_weight
from rkllm_core.toolkit.quant.gptq import MIN_DAMP, HessianAccumulator, auto_damp, gptq_quantize
from rkllm_core.toolkit.quant.pipeline import target_linears
from rkllm_core.toolkit.quant.smoothquant import smoothing_factors


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    return torch.randn(n, d, generator=g) @ mix * torch.linspace(0.2, 3.0, d)


def test_gptq_beats_round_to_nearest_on_output_error() -> None:
    d_in, d_out = 128, 64
    x = _correlated_inputs(2048, d_in)
    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(1)) * 0.1
    acc = HessianAccumulator(d_in)
    for chunk in x.split(512):
        acc.add(chunk)
    assert torch.allclose(acc.h, 2 * x.t() @ x / x.shape[0], rtol=1e-3, atol=1e-3)
    for name in ("w4a16", "w4a16_g32", "w8a8_g128"):
        dt = parse_dtype(name)
        q_rtn, s_rtn = quantize_weight(w, dt)
        ref = x @ w.t()
        err_rtn = (x @ dequantize_weight(q_rtn, s_rtn, dt.group_size).t() - ref).pow(2).mean()
        for act_order in (False, True):
            q_g, s_g = gptq_quantize(w, acc.h, dt, act_order=act_order)
            assert q_g.dtype == torch.int8
            assert int(q_g.min()) >= dt.qmin and int(q_g.max()) <= dt.qmax
            assert s_g.shape == s_rtn.shape and s_g.dtype == torch.float16
            err_gptq = (x @ dequantize_weight(q_g, s_g, dt.group_size).t() - ref).pow(2).mean()
            assert err_gptq < 0.8 * err_rtn, (name, act_order, float(err_gptq), float(err_rtn))
            if act_order:
                # static groups: the scales are those of the original weights, so the layer is
                # stored in plain column order (desc_act=False) with no permutation to record
                assert torch.equal(s_g, s_rtn)


def test_gptq_act_order_helps_when_input_energy_is_uneven() -> None:
    """The published reason for act-order: inputs whose energy varies a lot across channels
    (as in LLM activations); quantizing the strong channels first leaves room to compensate."""
    d_in, d_out = 256, 64
    g = torch.Generator().manual_seed(4)
    energy = torch.ones(d_in)
    energy[torch.randperm(d_in, generator=g)[:16]] = 20.0  # a few outlier channels, scattered
    x = _correlated_inputs(4096, d_in, seed=5) * energy
    w = torch.randn(d_out, d_in, generator=g) * 0.1
    acc = HessianAccumulator(d_in)
    acc.add(x)
    dt = parse_dtype("w4a16_g32")
    ref = x @ w.t()
    errs = {}
    for act_order in (False, True):
        q, s = gptq_quantize(w, acc.h, dt, act_order=act_order)
        errs[act_order] = float(
            (x @ dequantize_weight(q, s, dt.group_size).t() - ref).pow(2).mean()
        )
    assert errs[True] < errs[False], errs


def test_gptq_scale_refit_lowers_the_calibration_error_and_keeps_the_integers() -> None:
    d_in, d_out = 256, 64
    x = _correlated_inputs(2048, d_in, seed=7)
    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(8)) * 0.1
    acc = HessianAccumulator(d_in)
    acc.add(x)
    ref = x @ w.t()
    for name in ("w4a16_g32", "w4a16_g64", "w4a16", "w8a8"):
        dt = parse_dtype(name)
        runs = {
            refit: gptq_quantize(w, acc.h, dt, "kl_divergence", act_order=True, refit_scales=refit)
            for refit in (False, True)
        }
        errs = {
            k: float((x @ dequantize_weight(q, s, dt.group_size).t() - ref).pow(2).mean())
            for k, (q, s) in runs.items()
        }
        assert torch.equal(runs[True][0], runs[False][0]), name  # only the scales move
        assert runs[True][1].dtype == torch.float16 and bool((runs[True][1] > 0).all())
        assert not torch.equal(runs[True][1], runs[False][1]), name
        assert errs[True] < errs[False], (name, errs)


def test_level1_w4a16_without_dataset_beats_rounding_with_refit_scales(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    """Through the public API: level 1 on grouped w4a16 with the built-in calibration is
    closer to the float model than level 0 on text it never saw, and its scales are not the
    round-to-nearest ``max|block| / 7`` (they were refit to GPTQ's integers)."""
    from rkllm_core.toolkit.quant.qlinear import QuantLinear

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    float_w = {n: lin.weight.detach().clone() for n, lin in target_linears(llm.model).items()}
    text = "A held-out sentence: the ferry left the harbour at dawn, late again."
    ref = llm.get_logits(text)
    errs = {}
    for level in (0, 1):
        llm.build(optimization_level=level, quantized_dtype="w4a16_g32",
                  target_platform="rk3576", num_npu_core=2)  # fmt: skip
        errs[level] = float((llm.get_logits(text) - ref).norm() / ref.norm())
    assert errs[1] < errs[0], errs
    layers = {n: m for n, m in llm.model.named_modules() if isinstance(m, QuantLinear)}
    assert layers.keys() == float_w.keys()
    moved = total = 0
    for name, layer in layers.items():
        rtn = quantize_weight(float_w[name], layer.qdtype)[1]
        moved += int((rtn != layer.scales).sum())
        total += rtn.numel()
    assert moved > 0.9 * total, (moved, total)


def test_gptq_damping_grows_with_inputs_per_token(
    tiny_model_dir: Callable[[str], Path], calib_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dampening rule (its quality is measured in benchmarks/quant_ppl.py on held-out
    text): a floor, more for wider layers and fewer tokens, an explicit value wins, and a
    level-1 build gives every layer the value for its width and the tokens it was fed."""
    from rkllm_core.toolkit.quant import pipeline
    from rkllm_core.toolkit.quant.formats import parse_platform
    from rkllm_core.toolkit.quant.pipeline import BuildPlan

    assert auto_damp(896, 1_000_000) == MIN_DAMP
    assert auto_damp(4864, 11_509) > auto_damp(896, 11_509) > MIN_DAMP
    assert auto_damp(896, 2_000) > auto_damp(896, 11_509)
    plan = BuildPlan(parse_dtype("w4a16_g32"), "normal", parse_platform("rk3576"), gptq=True)
    assert plan.gptq_damp(256, 300) == auto_damp(256, 300)
    plan.damp = 0.05
    assert plan.gptq_damp(256, 300) == 0.05

    seen: dict[int, float] = {}
    real = pipeline.gptq_quantize

    def recording(w: torch.Tensor, h: torch.Tensor, *args: Any, **kw: Any) -> Any:
        seen[w.shape[1]] = kw["damp"]
        return real(w, h, *args, **kw)

    monkeypatch.setattr(pipeline, "gptq_quantize", recording)
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=1, quantized_dtype="w4a16_g32", target_platform="rk3576",
              num_npu_core=2, dataset=str(calib_json))  # fmt: skip
    tokens = llm.manifest["calibration"]["tokens"]
    assert len(seen) >= 2  # the tiny model's layers have at least two input widths
    for width, damp in seen.items():
        assert damp == auto_damp(width, tokens), (width, damp, tokens)


def test_gptq_refinements_default_to_weight_only_dtypes() -> None:
    from rkllm_core.toolkit.quant.formats import parse_platform
    from rkllm_core.toolkit.quant.pipeline import BuildPlan

    w4 = BuildPlan(parse_dtype("w4a16_g64"), "normal", parse_platform("rk3576"), gptq=True)
    w8 = BuildPlan(parse_dtype("w8a8"), "normal", parse_platform("rk3588"), gptq=True)
    for field in (w4.refit_scales, w4.weighted_clip):
        assert w4.refinement(field) and not w8.refinement(field)
    assert not w4.refinement(False) and w8.refinement(True)  # an explicit choice wins


def test_smoothing_factors_balance_ranges() -> None:
    a = torch.tensor([100.0, 1.0, 0.0])
    w = torch.tensor([[0.01, 1.0, 1.0]])
    s = smoothing_factors(a, [w], alpha=0.5)
    assert torch.allclose(s[:2], torch.tensor([100.0, 1.0]))
    assert s[2] == 1.0  # dead channel untouched
    # after smoothing both sides of channel 0 have the same range
    assert torch.isclose(a[0] / s[0], w[0, 0] * s[0])


def test_smoothquant_and_gptq_keep_float_function(
    tiny_model_dir: Callable[[str], Path], calib_json: Path
) -> None:
    """Level 1 on w8a8 must beat level 0 on the calibration text (same dtype, same data)."""
    errs = {}
    for level in (0, 1):
        llm = RKLLM(strict=True)
        llm.load_huggingface(str(tiny_model_dir("llama")))
        text = "Calibration data decides the activation ranges of every linear layer."
        ref = llm.get_logits(text)
        llm.build(optimization_level=level, quantized_dtype="w8a8", dataset=str(calib_json))
        errs[level] = float((llm.get_logits(text) - ref).norm() / ref.norm())
        if level:
            assert llm.manifest["calibration"]["smoothed_groups"] > 0
            assert llm.manifest["optimizations"] == ["gptq", "smoothquant"]
    assert errs[1] < errs[0], errs


def test_hybrid_rate_switches_the_requested_share(
    tiny_model_dir: Callable[[str], Path], calib_json: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("qwen2")))
    n = len(target_linears(llm.model))
    llm.build(optimization_level=0, quantized_dtype="w8a8", hybrid_rate=0.5,
              dataset=str(calib_json))  # fmt: skip
    switched = llm.manifest["hybrid_layers"]
    assert len(switched) == round(0.5 * n)
    from rkllm_core.toolkit.quant.qlinear import QuantLinear

    dtypes = {name: m.qdtype.name for name, m in llm.model.named_modules()
              if isinstance(m, QuantLinear)}  # fmt: skip
    assert {dtypes[s] for s in switched} == {"w8a8_g128"}
    assert sum(d == "w8a8" for d in dtypes.values()) == n - len(switched)


def test_smoothing_search_prefers_migration_for_an_outlier_channel() -> None:
    from rkllm_core.toolkit.quant.smoothquant import search_factors

    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 64, generator=g)
    x[:, 3] *= 80.0  # one channel with huge activations, as in LLM MLPs
    w = torch.randn(32, 64, generator=g) * 0.05
    alpha, s = search_factors(x, x.abs().amax(0), [w], parse_dtype("w8a8"))
    assert alpha is not None and s[3] > 5 * s.median()


def test_activation_clip_search_never_worse_than_calibrator() -> None:
    from rkllm_core.toolkit.quant.pipeline import search_act_scale
    from rkllm_core.toolkit.quant.qlinear import QuantLinear

    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 64, generator=g)
    x[0] *= 60.0  # one outlier token sets the max
    lin = torch.nn.Linear(64, 32, bias=False)
    dt = parse_dtype("w8a8")
    q, s = quantize_weight(lin.weight.detach(), dt)
    t0 = float(x.abs().max())
    scale = search_act_scale(lin, q, s, dt, x, t0)
    assert 0 < scale <= t0 / 127

    def err(sc: float) -> float:
        layer = QuantLinear.from_quantized(q, s, dt, None, "static", sc)
        return float(((layer(x) - lin(x)) ** 2).sum())

    assert err(scale) <= err(t0 / 127)


def test_rms_balanced_smoothing_generalizes_to_unseen_tokens() -> None:
    """Why the build balances per-channel RMS: on sparse heavy-tailed inputs (SwiGLU outputs)
    the calibration maximum of a channel is a noisy statistic; balancing on it amplifies
    channels whose unseen values exceed it, and the static int8 range clips them."""
    dt = parse_dtype("w8a8")
    d, o = 256, 128
    lap = torch.distributions.Laplace(0.0, 1.0)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        scale = torch.exp(torch.empty(d).uniform_(-2, 1, generator=g))

        def sample(n: int, g: torch.Generator = g, scale: torch.Tensor = scale) -> torch.Tensor:
            active = (torch.rand(n, d, generator=g) < 0.2).float()
            return lap.sample((n, d)) * active * scale

        torch.manual_seed(seed)
        calib, unseen = sample(512), sample(8192)
        w = torch.randn(o, d, generator=g) * 0.05
        ref = unseen @ w.t()
        errs = {}
        for name, stat in (("max", calib.abs().amax(0)), ("rms", calib.pow(2).mean(0).sqrt())):
            s = smoothing_factors(stat, [w], alpha=0.9)
            q, sc = quantize_weight(w * s, dt)
            step = float((calib / s).abs().max()) / 127  # static range from calibration
            qx = torch.clamp(torch.round(unseen / s / step), -127, 127) * step
            out = qx @ dequantize_weight(q, sc, None).t()
            errs[name] = float(((out - ref) ** 2).mean() / (ref**2).mean())
        assert errs["rms"] < 0.5 * errs["max"], (seed, errs)


def test_gptq_warns_when_calibration_is_too_small_for_its_hessians(
    tiny_model_dir: Callable[[str], Path], calib_json: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from rkllm_core.toolkit.quant.pipeline import GPTQ_TOKENS_PER_INPUT, warn_if_few_gptq_tokens

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    targets = target_linears(llm.model)
    widest = max(lin.in_features for lin in targets.values())
    assert warn_if_few_gptq_tokens(GPTQ_TOKENS_PER_INPUT * widest - 1, targets)
    assert not warn_if_few_gptq_tokens(GPTQ_TOKENS_PER_INPUT * widest, targets)
    caplog.clear()
    with caplog.at_level("WARNING", logger="rkllm_core.toolkit.quant.pipeline"):
        llm.build(
            optimization_level=1,
            quantized_dtype="w4a16",
            target_platform="rk3576",
            num_npu_core=2,
            dataset=str(calib_json),
        )
    tokens = llm.manifest["calibration"]["tokens"]
    warned = any("add calibration samples" in r.getMessage() for r in caplog.records)
    assert warned == (tokens < GPTQ_TOKENS_PER_INPUT * widest)


def test_norm_fed_layers_balance_the_maximum_and_down_projections_the_rms(
    tiny_model_dir: Callable[[str], Path], calib_json: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outlier channels after a norm are persistent (its weight makes them): their calibration
    maximum is stable and is what the static range must cover; SwiGLU outputs are sparse, so
    the down projections balance per-channel RMS instead."""
    from rkllm_core.toolkit.quant import pipeline

    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = pipeline.apply_smoothing

    def spy(*args: Any, **kwargs: Any) -> int:
        seen["absmax"], seen["stat"] = args[2], kwargs["act_stat"]
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "apply_smoothing", spy)
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=1, quantized_dtype="w8a8", dataset=str(calib_json))
    absmax, stat = seen["absmax"], seen["stat"]
    for name in absmax:
        if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            assert torch.equal(stat[name], absmax[name]), name
        elif name.endswith("down_proj"):
            assert float(stat[name].sum()) < 0.9 * float(absmax[name].sum()), name
    kinds = {n.rsplit(".", 1)[-1] for n in absmax}
    assert {"q_proj", "down_proj"} <= kinds
