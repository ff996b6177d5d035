"""Dtype specs, platform matrix and the integer format of weights."""

from __future__ import annotations

import pytest
import torch

from rkllm_core.errors import BuildConfigError, ConfigError
from rkllm_core.toolkit.quant import formats as F


@pytest.mark.parametrize("name", list(F.DTYPES))
def test_every_dtype_integers_in_range_and_scales_as_specified(name: str) -> None:
    dt = F.DTYPES[name]
    torch.manual_seed(0)
    in_f = 1024
    w = torch.randn(16, in_f) * torch.linspace(0.01, 3.0, 16).unsqueeze(1)
    q, s = F.quantize_weight(w, dt)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    groups = 1 if dt.group_size is None else in_f // dt.group_size
    assert s.shape == (16, groups)
    assert int(q.min()) >= dt.qmin and int(q.max()) <= dt.qmax
    # s = max|block| / qmax, in fp16
    blocks = w.reshape(16, groups, -1)
    expect = (blocks.abs().amax(-1) / dt.qmax).to(torch.float16)
    assert torch.equal(s, expect)
    # every block reaches the extreme integer (its max maps to +-qmax)
    assert torch.all(q.reshape(16, groups, -1).abs().amax(-1) == dt.qmax)
    # round-to-nearest: reconstruction error at most half a step (+ fp16 scale rounding)
    deq = F.dequantize_weight(q, s, dt.group_size)
    step = s.float().repeat_interleave(in_f // groups, dim=1)
    assert torch.all((deq - w).abs() <= 0.5 * step + 1e-3 * w.abs())


def test_int4_range_includes_minus_eight_and_packing_roundtrips() -> None:
    dt = F.parse_dtype("W4A16_G32")
    assert (dt.qmin, dt.qmax) == (-8, 7)
    q = torch.randint(-8, 8, (6, 64), dtype=torch.int8)
    packed = F.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 32)
    assert torch.equal(F.unpack_int4(packed), q)
    # the layout is documented: low nibble is the even column
    assert int(packed[0, 0]) == (int(q[0, 0]) & 0xF) | ((int(q[0, 1]) & 0xF) << 4)


def test_w8_is_symmetric_127() -> None:
    dt = F.parse_dtype("w8a8")
    w = torch.tensor([[-2.0, 1.0, 0.5, 0.0]])
    q, s = F.quantize_weight(w, dt)
    assert float(s) == pytest.approx(2.0 / 127, rel=1e-3)
    assert q.tolist() == [[-127, 64, 32, 0]]


def test_zero_block_gets_unit_scale() -> None:
    q, s = F.quantize_weight(torch.zeros(2, 64), F.parse_dtype("w4a16_g32"))
    assert torch.all(s == 1) and torch.all(q == 0)


@pytest.mark.parametrize(
    ("platform", "dtype", "ok"),
    [
        ("rk3588", "w8a8", True),
        ("RK3588", "w8a8_g512", True),
        ("rk3588", "w4a16", False),
        ("rk3576", "w4a16_g128", True),
        ("rk3576", "w8a8_g128", False),
        ("rv1126b", "w4a16_g64", True),
        ("rk3562", "w4a8_g32", True),
        ("rk3562", "w4a16", False),
        ("rk3576", "w4a8_g32", False),
    ],
)
def test_platform_matrix(platform: str, dtype: str, ok: bool) -> None:
    p, d = F.parse_platform(platform), F.parse_dtype(dtype)
    if ok:
        F.check_platform(d, p, 1)
    else:
        with pytest.raises(BuildConfigError, match="accepts") as e:
            F.check_platform(d, p, 1)
        # the message lists what the platform accepts
        assert p.dtypes[0] in str(e.value)


def test_npu_cores_and_unknown_names() -> None:
    F.check_platform(F.parse_dtype("w8a8"), F.parse_platform("rk3588"), 3)
    with pytest.raises(BuildConfigError, match="num_npu_core"):
        F.check_platform(F.parse_dtype("w8a8"), F.parse_platform("rk3576"), 3)
    with pytest.raises(ConfigError, match=r"rk3588|RK3588"):
        F.parse_platform("rk9999")
    with pytest.raises(BuildConfigError, match="w8a8"):
        F.parse_dtype("w3a16")


def test_group_size_and_context_checks() -> None:
    F.check_group_size(F.parse_dtype("w4a16_g128"), "l", 896, 4864)
    with pytest.raises(BuildConfigError, match="576"):
        F.check_group_size(F.parse_dtype("w4a16_g128"), "model.layers.0.q_proj", 576, 576)
    for bad in (0, 16400, 100, -32, 4096.0, True):
        with pytest.raises(BuildConfigError, match="multiple of 32"):
            F.check_max_context(bad)  # type: ignore[arg-type]
    F.check_max_context(16384)
