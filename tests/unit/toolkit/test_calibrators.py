"""Calibration algorithms on synthetic distributions with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rkllm_core.errors import BuildConfigError, QuantizationError
from rkllm_core.toolkit.quant import calibrators as C
from rkllm_core.toolkit.quant.formats import parse_dtype


def _hist(*tensors: torch.Tensor) -> C.AbsHistogram:
    h = C.AbsHistogram()
    for t in tensors:
        h.update(t)
    return h


def test_outlier_moves_minmax_but_not_percentile() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    clean = _hist(x)
    dirty = _hist(x, torch.tensor([1000.0]))
    assert C.activation_threshold(dirty, "minmax") == pytest.approx(1000.0)
    assert C.activation_threshold(dirty, "normal") == pytest.approx(1000.0)
    p_clean = C.activation_threshold(clean, "percentile")
    p_dirty = C.activation_threshold(dirty, "percentile")
    # 99.99th percentile of |N(0,1)| is 3.89; histogram resolution after the range grew to
    # ~1000 is 1000/2048 = 0.5, so the outlier may cost at most one bin
    assert 3.5 < p_clean < 4.4
    assert abs(p_dirty - 3.89) < 0.6 and p_dirty < 5


def test_percentile_matches_numpy_on_uniform() -> None:
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(1)) * 8.0
    h = _hist(x)
    for p in (50.0, 90.0, 99.0):
        expect = float(np.percentile(x.numpy(), p))
        assert C.percentile_threshold(h, p) == pytest.approx(expect, abs=2 * h.bin_width + 1e-3)


def test_kl_clips_heavy_tail_but_keeps_uniform_range() -> None:
    g = torch.Generator().manual_seed(2)
    # Student-t with 2 dof: heavy tails, max far above the bulk
    heavy = torch.distributions.StudentT(2.0).sample((200_000,))
    h = _hist(heavy)
    t = C.activation_threshold(h, "kl_divergence")
    assert t < 0.5 * h.absmax
    assert t > C.percentile_threshold(h, 90.0)  # not absurdly small either
    uniform = torch.rand(200_000, generator=g) * 2 - 1
    hu = _hist(uniform)
    assert C.activation_threshold(hu, "kl_divergence") > 0.9 * hu.absmax


def test_histogram_growth_merges_bins_exactly() -> None:
    a = torch.rand(10_000, generator=torch.Generator().manual_seed(3))  # range ~1
    b = a * 5.0  # forces the range to grow by 8x
    h = _hist(a, b)
    direct = C.AbsHistogram()
    direct.range = h.range
    direct.hist += torch.histc(torch.cat([a, b]), bins=2048, min=0, max=h.range).double().numpy()
    assert h.hist.sum() == 20_000
    # after exact power-of-two merges, counts agree with a one-shot histogram up to edge ties
    assert np.abs(np.cumsum(h.hist) - np.cumsum(direct.hist)).max() <= 2


def test_zeros_first_then_values() -> None:
    h = _hist(torch.zeros(100), torch.ones(100))
    assert h.hist.sum() == 200 and h.hist[0] == 100
    assert C.activation_threshold(_hist(torch.zeros(10)), "minmax") == 1.0


def test_nonfinite_activation_is_an_error() -> None:
    with pytest.raises(QuantizationError, match="non-finite"):
        _hist(torch.tensor([1.0, float("inf")]))


def test_unknown_algorithm() -> None:
    with pytest.raises(BuildConfigError, match="kl_divergence"):
        C.check_algorithm("entropy")


def test_weight_thresholds() -> None:
    dt = parse_dtype("w8a8")
    w = torch.randn(8, 4096, generator=torch.Generator().manual_seed(4))
    w[0, 0] = 50.0  # one outlier weight
    mm = C.weight_threshold(w, dt, "minmax")
    assert mm.shape == (8, 1) and torch.allclose(mm[:, 0], w.abs().amax(1))
    pc = C.weight_threshold(w, dt, "percentile", percentile=99.0)
    assert pc[0] < 5 and torch.all(pc <= mm)
    kl = C.weight_threshold(w, parse_dtype("w4a16"), "kl_divergence")
    assert kl[0] < 0.6 * 50 and torch.all(kl <= mm + 1e-6)
    # the clip search never has a larger error than no clipping
    from rkllm_core.toolkit.quant.formats import dequantize_weight, quantize_weight, weight_scales

    d4 = parse_dtype("w4a16")
    q1, s1 = quantize_weight(w, d4)
    q2, s2 = quantize_weight(w, d4, weight_scales(w, d4, kl))
    e1 = ((dequantize_weight(q1, s1, None) - w) ** 2).sum()
    e2 = ((dequantize_weight(q2, s2, None) - w) ** 2).sum()
    assert e2 < e1
