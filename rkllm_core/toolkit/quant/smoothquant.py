"""SmoothQuant: move activation outliers into the weights before w8a8 quantization.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models" (2022). For a group of Linear layers that read the same input ``x``, each input
channel j gets ``s_j = max|x_j|^alpha / max|W[:, j]|^(1-alpha)``; ``x`` is divided by ``s`` (folded
into whatever produced it, so the runtime pays nothing) and the weights' columns multiplied by
it. Two producers are folded here:

- a normalisation layer (RMSNorm / LayerNorm, including Gemma's ``1 + w`` form) that feeds the
  Linear layers directly (found by tensor identity during calibration, so no per-family table);
- the ``up`` projection of a gated MLP, whose rows scale the ``down`` projection's input
  (``down(act(gate(x)) * up(x))``), where the largest activation outliers of LLMs live.

Each fold is checked numerically on the producer and reverted if the producer does not behave
as assumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .formats import QuantDtype

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.5
_S_MIN, _S_MAX = 1e-5, 1e5


@dataclass
class SmoothGroup:
    """Linear layers sharing one input and the producer of that input."""

    producer: str  # module name of the norm or up projection
    kind: str  # "norm" | "up"
    linears: list[str]
    row_offset: int = 0  # for fused gate_up projections: where the up rows start


def find_mlp_pairs(model: nn.Module, targets: dict[str, nn.Linear]) -> list[SmoothGroup]:
    """``up -> down`` pairs of gated MLPs (``up_proj``, or the up half of ``gate_up_proj``)."""
    groups = []
    for name in targets:
        if not name.endswith(".down_proj"):
            continue
        prefix = name[: -len("down_proj")]
        down = targets[name]
        if prefix + "up_proj" in targets:
            groups.append(SmoothGroup(prefix + "up_proj", "up", [name]))
        elif prefix + "gate_up_proj" in targets:
            fused = targets[prefix + "gate_up_proj"]
            if fused.out_features == 2 * down.in_features:
                groups.append(SmoothGroup(prefix + "gate_up_proj", "up", [name], down.in_features))
    return groups


def smoothing_factors(
    act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float = DEFAULT_ALPHA
) -> torch.Tensor:
    """``s_j = a_j^alpha / w_j^(1-alpha)``, 1 where either side is zero."""
    w_absmax = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    a = act_absmax.float()
    s = a.pow(alpha) / w_absmax.pow(1.0 - alpha)
    ok = (a > 0) & (w_absmax > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp(_S_MIN, _S_MAX)


#: Migration strengths tried per group when calibration rows are available (None: no smoothing).
ALPHA_GRID: tuple[float | None, ...] = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)


#: Activation clip ratios tried together with each strength (relative to the smoothed
#: calibration maximum): the static scale is clipped later anyway, so the strength is chosen
#: for the range the layer will really use.
CLIP_RATIOS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12)


@torch.no_grad()
def search_factors(
    x: torch.Tensor,
    act_absmax: torch.Tensor,
    weights: list[torch.Tensor],
    dtype: QuantDtype,
    grid: tuple[float | None, ...] = ALPHA_GRID,
    clip_ratios: tuple[float, ...] = CLIP_RATIOS,
    act_stat: torch.Tensor | None = None,
) -> tuple[float | None, torch.Tensor]:
    """The smoothing strength with the smallest simulated w8a8 output error on rows ``x``.

    For each candidate the weights are scaled and rounded to nearest, the scaled activations
    quantized per tensor (range: the calibration maximum ``max_j a_j / s_j`` times the best of
    ``clip_ratios``), and the integer product compared with the float product of every Linear
    in the group.
    """
    from .formats import dequantize_weight, quantize_weight

    x = x.float()
    refs = [x @ w.detach().float().t() for w in weights]
    best: tuple[float, float | None, torch.Tensor] | None = None
    for alpha in grid:
        if alpha is None:
            s = torch.ones_like(act_absmax, dtype=torch.float32)
        else:
            s = smoothing_factors(act_absmax if act_stat is None else act_stat, weights, alpha)
        xs = x / s
        amax = float((act_absmax.float() / s).max()) or 1.0
        wq = []
        for w in weights:
            q, sc = quantize_weight(w.detach().float() * s.unsqueeze(0), dtype)
            wq.append(dequantize_weight(q, sc, dtype.group_size))
        for ratio in clip_ratios:
            step = amax * ratio / 127.0
            qx = torch.clamp(torch.round(xs / step), -127, 127) * step
            pairs = zip(wq, refs, strict=True)
            err = sum(float(((qx @ w.t() - ref) ** 2).sum()) for w, ref in pairs)
            if best is None or err < best[0]:
                best = (err, alpha, s)
    assert best is not None
    return best[1], best[2]


def _fold_into_norm(norm: nn.Module, s: torch.Tensor) -> bool:
    """Make ``norm(x)`` return ``norm(x) / s``; False (and unchanged) if the form is unknown."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != s.shape:
        return False
    bias = getattr(norm, "bias", None)
    bias = bias if isinstance(bias, torch.Tensor) else None
    w0 = weight.detach().clone()
    b0 = bias.detach().clone() if bias is not None else None
    probe = torch.randn(4, s.numel(), generator=torch.Generator().manual_seed(0))
    probe = probe.to(weight.dtype)
    with torch.no_grad():
        expect = norm(probe).float() / s
        # y = n(x) * w (Llama, Qwen, LayerNorm) or y = n(x) * (1 + w) (Gemma)
        for candidate in (w0.float() / s, (1.0 + w0.float()) / s - 1.0):
            weight.copy_(candidate.to(weight.dtype))
            if bias is not None and b0 is not None:
                bias.copy_((b0.float() / s).to(bias.dtype))
            got = norm(probe).float()
            if torch.allclose(got, expect, rtol=1e-3, atol=1e-5 * float(expect.abs().max())):
                return True
        weight.copy_(w0)
        if bias is not None and b0 is not None:
            bias.copy_(b0)
    return False


def apply_smoothing(
    model: nn.Module,
    groups: list[SmoothGroup],
    act_absmax: dict[str, torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
    rows: dict[str, torch.Tensor] | None = None,
    dtype: QuantDtype | None = None,
    act_stat: dict[str, torch.Tensor] | None = None,
) -> int:
    """Fold smoothing factors for every group; returns how many groups were smoothed.

    With calibration ``rows`` (sampled inputs per Linear) and the target ``dtype``, each
    group's strength is searched (:func:`search_factors`); otherwise ``alpha`` is used.
    """
    modules = dict(model.named_modules())
    done = 0
    with torch.no_grad():
        for grp in groups:
            lins = [modules[n] for n in grp.linears]
            if grp.linears[0] not in act_absmax:
                continue
            a = act_absmax[grp.linears[0]]
            x = rows.get(grp.linears[0]) if rows is not None else None
            if x is not None and dtype is not None:
                stat = act_stat.get(grp.linears[0]) if act_stat is not None else None
                chosen, s = search_factors(x, a, [lin.weight for lin in lins], dtype, act_stat=stat)
                log.debug("smoothing %s: alpha %s", grp.producer, chosen)
                if chosen is None:
                    continue
            else:
                stat = act_stat.get(grp.linears[0], a) if act_stat is not None else a
                s = smoothing_factors(stat, [lin.weight for lin in lins], alpha)
            producer = modules[grp.producer]
            if grp.kind == "norm":
                if not _fold_into_norm(producer, s):
                    log.debug("smoothing skipped: cannot fold into %s", grp.producer)
                    continue
            else:
                span = slice(grp.row_offset, grp.row_offset + s.numel())
                pw = producer.weight
                pw[span] = (pw[span].float() / s.unsqueeze(1)).to(pw.dtype)
                if producer.bias is not None:
                    producer.bias[span] = (producer.bias[span].float() / s).to(producer.bias.dtype)
            for lin in lins:
                lin.weight.copy_((lin.weight.float() * s.unsqueeze(0)).to(lin.weight.dtype))
            done += 1
    return done
