"""Calibration algorithms: how a range threshold T is chosen for a symmetric quantizer.

For a b-bit symmetric quantizer the scale is ``s = T / (2^(b-1) - 1)``. The four algorithms of
Rockchip's toolkit, as the seed document describes them:

- ``minmax``: T = max|x| seen;
- ``normal``: the same range as minmax (the accuracy optimisation of ``optimization_level=1``
  is applied on top of it by the build, not here);
- ``percentile``: T = the p-th percentile of |x| (p = 99.99 by default), read from a 2048-bin
  histogram; one outlier cannot move it;
- ``kl_divergence``: TensorRT's entropy calibration on the same histogram: the cut-off whose
  clipped distribution P (outliers folded into the last bin) is closest, in KL(P||Q), to its
  quantized version Q with 128 levels.

Activations are observed with :class:`AbsHistogram`; weights are clipped per block with
:func:`weight_threshold` (for ``kl_divergence`` the weight analogue is a search for the clip
ratio with the smallest quantization error, since a 32-value block has no useful histogram).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BuildConfigError, QuantizationError

if TYPE_CHECKING:
    import torch

    from .formats import QuantDtype

ALGORITHMS = ("normal", "minmax", "kl_divergence", "percentile")
NUM_BINS = 2048
DEFAULT_PERCENTILE = 99.99


class AbsHistogram:
    """A 2048-bin histogram of |x| over ``[0, range]`` that grows as larger values arrive.

    The range only ever grows by powers of two, so the old bins merge exactly into the new
    ones (2^k old bins become one) and no count is ever smeared between bins.
    """

    def __init__(self, bins: int = NUM_BINS) -> None:
        if bins & (bins - 1):
            raise ValueError("the number of bins must be a power of two")
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.float64)
        self.range = 0.0
        self.absmax = 0.0
        self.count = 0
        self._zeros_pending = 0  # zeros seen before any non-zero value fixed the range

    @property
    def bin_width(self) -> float:
        return self.range / self.bins

    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Add the absolute values of ``x`` to the histogram."""
        import torch

        a = torch.as_tensor(x).detach().reshape(-1).abs().float()
        if a.numel() == 0:
            return
        m = float(a.max())
        if not math.isfinite(m):
            raise QuantizationError(
                "non-finite activation seen during calibration: the model overflows on the"
                " calibration data (load it in float32, or check the dataset)"
            )
        self.count += a.numel()
        self.absmax = max(self.absmax, m)
        if m == 0.0 and self.range == 0.0:
            self._zeros_pending += a.numel()
            return
        if self.range == 0.0:
            self.range = m
        elif m > self.range:
            self._grow(m)
        self.hist += torch.histc(a, bins=self.bins, min=0.0, max=self.range).double().numpy()
        if self._zeros_pending:
            self.hist[0] += self._zeros_pending
            self._zeros_pending = 0

    def _grow(self, m: float) -> None:
        k = max(1, math.ceil(math.log2(m / self.range)))
        # float rounding of log2 may leave the new range a hair short of m
        while self.range * 2.0**k < m:
            k += 1
        factor = 2**k
        if factor >= self.bins:
            merged = np.zeros(self.bins)
            merged[0] = self.hist.sum()
        else:
            merged = np.zeros(self.bins)
            merged[: self.bins // factor] = self.hist.reshape(-1, factor).sum(axis=1)
        self.hist = merged
        self.range *= factor

    def summary(self) -> dict[str, float]:
        return {"absmax": self.absmax, "count": float(self.count)}


def percentile_threshold(h: AbsHistogram, p: float = DEFAULT_PERCENTILE) -> float:
    """Upper edge of the bin where the cumulative share of |x| reaches ``p`` percent."""
    total = h.hist.sum()
    if total == 0:
        return h.absmax
    cdf = np.cumsum(h.hist) / total
    idx = int(np.searchsorted(cdf, p / 100.0, side="left"))
    return min((idx + 1) * h.bin_width, h.absmax)


def kl_threshold(h: AbsHistogram, levels: int = 128, stride: int = 4) -> float:
    """TensorRT entropy calibration: the cut-off minimising KL(P || Q).

    Candidates are the bin edges from ``levels`` up to the histogram's end; every ``stride``-th
    one is tried first, then the neighbourhood of the best is searched bin by bin.
    """
    hist = h.hist
    n = len(hist)
    if hist.sum() == 0 or n <= levels:
        return h.absmax
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])

    def kl_at(i: int) -> float:
        p = hist[:i].copy()
        p[i - 1] += tail[i]
        sliced = hist[:i]
        nonzero = sliced > 0
        edges = (np.arange(levels + 1) * i) // levels
        sums = np.add.reduceat(sliced, edges[:-1])
        nz = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        per_bin = np.divide(sums, nz, out=np.zeros_like(sums), where=nz > 0)
        q = np.repeat(per_bin, np.diff(edges)) * nonzero
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            return math.inf
        mask = p > 0
        pn = p[mask] / p_sum
        qn = np.maximum(q[mask] / q_sum, 1e-12)  # P mass where Q has none is heavily penalised
        return float(np.sum(pn * np.log(pn / qn)))

    coarse = list(range(levels, n + 1, stride))
    if coarse[-1] != n:
        coarse.append(n)
    best = min(coarse, key=kl_at)
    fine = range(max(levels, best - stride + 1), min(n, best + stride - 1) + 1)
    best = min(fine, key=kl_at)
    return min(best * h.bin_width, h.absmax)


def activation_threshold(
    h: AbsHistogram, algorithm: str, bits: int = 8, percentile: float = DEFAULT_PERCENTILE
) -> float:
    """The range threshold T of one activation tensor under ``algorithm``."""
    algorithm = check_algorithm(algorithm)
    if algorithm in ("normal", "minmax"):
        t = h.absmax
    elif algorithm == "percentile":
        t = percentile_threshold(h, percentile)
    else:
        t = kl_threshold(h, levels=2 ** (bits - 1))
    # an all-zero input (e.g. a dead channel group) still needs a usable scale
    return t if t > 0 else 1.0


def check_algorithm(algorithm: str) -> str:
    """Normalise a calibration algorithm name or raise :class:`BuildConfigError`."""
    name = str(algorithm).strip().lower()
    if name not in ALGORITHMS:
        raise BuildConfigError(
            f"unknown quantized_algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}"
            f" (or 'grq', which rkllm-py runs as GPTQ on w4a16 dtypes)"
        )
    return name


def weight_threshold(
    w: torch.Tensor,
    dtype: QuantDtype,
    algorithm: str,
    percentile: float = DEFAULT_PERCENTILE,
) -> torch.Tensor:
    """Per-block clipping threshold [out, n_groups] of the weight ``w`` [out, in]."""
    from .formats import _blocks

    return block_threshold(
        _blocks(w.detach().float(), dtype.group_size), dtype, algorithm, percentile
    )


def block_threshold(
    blocks: torch.Tensor,
    dtype: QuantDtype,
    algorithm: str,
    percentile: float = DEFAULT_PERCENTILE,
    grid: int = 20,
    min_ratio: float = 0.5,
) -> torch.Tensor:
    """Clipping threshold of each block of ``blocks`` [..., block] (reduces the last axis)."""
    import torch

    algorithm = check_algorithm(algorithm)
    mags = blocks.abs()
    absmax = mags.amax(dim=-1)
    if algorithm in ("normal", "minmax"):
        return absmax
    if algorithm == "percentile":
        n = mags.shape[-1]
        k = min(n, max(1, math.ceil(percentile / 100.0 * n)))
        return mags.kthvalue(k, dim=-1).values
    # kl_divergence on weights: the clip ratio with the smallest squared rounding error
    best_err = torch.full_like(absmax, math.inf)
    best_t = absmax.clone()
    for ratio in torch.linspace(1.0, min_ratio, grid).tolist():
        t = absmax * ratio
        s = (t / dtype.qmax).to(torch.float16).float().clamp_min(1e-8).unsqueeze(-1)
        q = torch.clamp(torch.round(blocks / s), dtype.qmin, dtype.qmax)
        err = ((q * s - blocks) ** 2).sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_t = torch.where(better, t, best_t)
    return best_t
