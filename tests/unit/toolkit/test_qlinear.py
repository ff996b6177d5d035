"""The simulated integer arithmetic of QuantLinear."""

from __future__ import annotations

import pytest
import torch

from rkllm_core.toolkit.quant.formats import parse_dtype, quantize_weight
from rkllm_core.toolkit.quant.qlinear import QuantLinear


def _layer(dtype: str, act_mode: str | None = None, act_scale: float | None = None):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64, bias=True)
    dt = parse_dtype(dtype)
    q, s = quantize_weight(lin.weight.detach(), dt)
    ql = QuantLinear.from_quantized(q, s, dt, lin.bias, act_mode=act_mode, act_scale=act_scale)
    return lin, ql, q, s


@pytest.mark.parametrize("dtype", ["w4a16", "w4a16_g32", "w4a16_g128"])
def test_a16_equals_fp16_input_times_dequantized_weight(dtype: str) -> None:
    _, ql, q, s = _layer(dtype)
    x = torch.randn(3, 5, 256)
    g = parse_dtype(dtype).group_size or 256
    w = (q.float().reshape(64, -1, g) * s.float().unsqueeze(-1)).reshape(64, 256)
    expect = x.half().float() @ w.t() + ql.bias
    assert torch.allclose(ql(x), expect, atol=1e-5)


@pytest.mark.parametrize("dtype", ["w8a8", "w8a8_g128", "w4a8_g32"])
def test_a8_static_is_integer_matmul_scaled(dtype: str) -> None:
    s_x = 3.0 / 127
    _, ql, q, s = _layer(dtype, "static", s_x)
    x = torch.randn(7, 256)
    qx = torch.clamp(torch.round(x / s_x), -127, 127)
    g = parse_dtype(dtype).group_size or 256
    # reference in float64: integer partial sums are exact there
    parts = torch.einsum(
        "tgn,ogn->tgo", qx.double().reshape(7, -1, g), q.double().reshape(64, -1, g)
    )
    expect = (parts * s.double().t().unsqueeze(0)).sum(1) * s_x + ql.bias.double()
    assert torch.allclose(ql(x).double(), expect, atol=1e-4)
    # inputs beyond the calibrated range saturate
    big = ql(torch.full((1, 256), 100.0))
    same = ql(torch.full((1, 256), 3.0))
    assert torch.allclose(big, same)


def test_a8_dynamic_scale_follows_the_input() -> None:
    _, ql, _, _ = _layer("w8a8", "dynamic")
    x = torch.randn(4, 256)
    # scale-equivariant: doubling the input doubles the output (without bias)
    y1 = ql(x) - ql.bias
    y2 = ql(2 * x) - ql.bias
    assert torch.allclose(y2, 2 * y1, atol=1e-4)


@pytest.mark.parametrize("dtype", ["w8a8", "w8a8_g128"])
def test_a8_per_token_scales_each_row_by_its_own_maximum(dtype: str) -> None:
    _, ql, q, s = _layer(dtype, "per_token")
    x = torch.randn(5, 256)
    x[2] *= 50.0  # one loud token must not coarsen the others (it would per call)
    s_x = x.abs().amax(dim=1, keepdim=True) / 127
    qx = torch.clamp(torch.round(x / s_x), -127, 127)
    g = parse_dtype(dtype).group_size or 256
    parts = torch.einsum(
        "tgn,ogn->tgo", qx.double().reshape(5, -1, g), q.double().reshape(64, -1, g)
    )
    expect = (parts * s.double().t().unsqueeze(0)).sum(1) * s_x.double() + ql.bias.double()
    assert torch.allclose(ql(x).double(), expect, atol=1e-3)
    # every row is exactly what it would be alone
    for t in range(5):
        assert torch.allclose(ql(x[t : t + 1]), ql(x)[t : t + 1], atol=1e-5)
    per_call = QuantLinear.from_quantized(q, s, dtype, ql.bias, act_mode="dynamic")
    quiet = [0, 1, 3, 4]
    ref = torch.nn.functional.linear(x, ql.weight, ql.bias)[quiet]
    err_token = (ql(x)[quiet] - ref).norm()
    err_call = (per_call(x)[quiet] - ref).norm()
    assert err_token < 0.2 * err_call


def test_quantization_error_is_bounded_vs_float() -> None:
    lin, ql, _, _ = _layer("w8a8", "dynamic")
    x = torch.randn(16, 256)
    ref = lin(x)
    rel = (ql(x) - ref).norm() / ref.norm()
    assert rel < 0.02
    lin4, ql4, _, _ = _layer("w4a16")
    rel4 = (ql4(x) - lin4(x)).norm() / lin4(x).norm()
    assert 0.02 < rel4 < 0.3  # 4-bit per-channel is visibly lossy, but not garbage


def test_a16_ignores_act_mode_and_static_needs_scale() -> None:
    q = torch.zeros(4, 32, dtype=torch.int8)
    s = torch.ones(4, 1, dtype=torch.float16)
    assert QuantLinear.from_quantized(q, s, "w4a16", act_mode="static").act_mode is None
    with pytest.raises(ValueError, match="act_scale"):
        QuantLinear.from_quantized(q, s, "w8a8", act_mode="static")


def test_with_activation_mode_copies_a_static_build_and_switches_only_the_copy() -> None:
    from rkllm_core.toolkit.evaluate import with_activation_mode

    _, ql, _, _ = _layer("w8a8", act_mode="static", act_scale=0.05)
    static = torch.nn.Sequential(ql)
    per_token = with_activation_mode(static, "per_token")
    assert per_token[0].act_mode == "per_token" and static[0].act_mode == "static"
    kept = per_token.state_dict()  # the same weights and weight scales (no static act scale)
    assert kept and "0.act_scale" in static.state_dict()
    for name, tensor in kept.items():
        torch.testing.assert_close(tensor, static.state_dict()[name])
    x = torch.randn(2, 256) * 10
    assert not torch.allclose(per_token(x), static(x))  # the activation scales differ
