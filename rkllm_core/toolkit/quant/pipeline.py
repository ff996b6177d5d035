"""The build: calibrate, optimise and quantize a transformers causal LM in place.

Order of work (each pass shows a progress bar):

1. observation pass (when anything needs calibration): the float model runs on the calibration
   batches; hooks record each quantized Linear's input statistics (per-channel max and mean
   square, |x| histogram), which normalisation layer feeds it, and every decoder layer's call
   arguments (so layers can be replayed one at a time);
2. ``optimization_level=1`` with an ``a8`` dtype: SmoothQuant folding, checked on the model's
   float output;
3. quantization: ``optimization_level=1`` runs GPTQ (act-order with static group scales;
   for ``a16`` dtypes the scales are then refit to the integers) layer by layer, feeding
   each decoder layer the output of the already-quantized layers before it (activation
   histograms and sampled rows for the static scales are collected along the way, and each
   static scale is clip-searched on its layer's output error);
   level 0 rounds to nearest;
4. every quantized Linear is replaced by :class:`~.qlinear.QuantLinear`.

Parameters that stay in floating point (embeddings, norms, the output head) are rounded to
fp16, the precision the NPU keeps them in; the simulation itself computes in fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import BuildConfigError, QuantizationError
from .calibrators import AbsHistogram, activation_threshold, weight_threshold
from .formats import (
    Platform,
    QuantDtype,
    check_group_size,
    dequantize_weight,
    quantize_weight,
    weight_scales,
)
from .gptq import HessianAccumulator, auto_damp, gptq_quantize
from .qlinear import QuantLinear
from .smoothquant import SmoothGroup, apply_smoothing, find_mlp_pairs

log = logging.getLogger(__name__)


@dataclass
class BuildPlan:
    """Everything ``build()`` decided, validated before any work starts."""

    dtype: QuantDtype
    algorithm: str
    platform: Platform
    optimization_level: int = 1
    act_mode: str | None = "static"
    hybrid_rate: float = 0.0
    alt_dtype: QuantDtype | None = None
    percentile: float = 99.99
    smooth_alpha: float = 0.5
    #: per-channel activation magnitude the smoothing factors balance for a gated MLP's down
    #: projection: "rms" (robust: SwiGLU outputs are sparse, the calibration maximum of a
    #: rarely active channel underestimates it on other text, and smoothing then amplifies it
    #: past the static range) or "max" (SmoothQuant's original)
    smooth_stat: str = "rms"
    #: the same for Linears fed by a normalisation layer: their outlier channels are persistent
    #: (the norm's weight makes them), so the calibration maximum is a stable statistic and
    #: balancing it matters most (Qwen2.5-Coder-0.5B w8a8: +6.6% with "max" here, +10.5% "rms")
    smooth_stat_norm: str = "max"
    gptq: bool = False
    #: GPTQ column order by decreasing Hessian diagonal, with static group scales
    act_order: bool = True
    #: The two refinements below default (None) to weight-only (``a16``) dtypes, the builds
    #: they were measured on; ``a8`` builds keep the GPTQ their figures were measured with.
    #: After GPTQ, refit each row's group scales to its integers by least squares on the
    #: calibration inputs (see :func:`.gptq.refit_group_scales`).
    refit_scales: bool | None = None
    #: The ``kl_divergence`` clip search of GPTQ's static groups weighs each column's rounding
    #: error by its input energy (the Hessian diagonal) rather than equally.
    weighted_clip: bool | None = None
    #: GPTQ's relative dampening of the Hessian diagonal; None: each layer's from its width
    #: and the calibration tokens (:func:`.gptq.auto_damp`)
    damp: float | None = None

    @property
    def weight_rule(self) -> str:
        """How GPTQ clips each weight group: ``normal`` at level 1 searches the clip ratio with
        the smallest rounding error (the weight analogue of ``kl_divergence``, as AWQ-style
        clipping); the other algorithms keep their own rule."""
        if self.optimization_level >= 1 and self.algorithm == "normal":
            return "kl_divergence"
        return self.algorithm

    def refinement(self, value: bool | None) -> bool:
        """A GPTQ refinement's setting: ``value``, or by default on for ``a16`` dtypes."""
        return not self.dtype.quantizes_activations if value is None else value

    def gptq_damp(self, in_features: int, tokens: int) -> float:
        """GPTQ's relative dampening for a layer of ``in_features`` inputs seen on ``tokens``."""
        return auto_damp(in_features, tokens) if self.damp is None else self.damp

    @property
    def whole_builtin_calibration(self) -> bool:
        """Without a dataset, take all of the built-in calibration text, past the tokens the
        build wants: for GPTQ on weight-only dtypes, whose Hessians steady with every token
        (SmolLM2 w4a16 on held-out text: 56% -> 58% of rounding's loss recovered at g64, 44%
        -> 50% at g32). Not for ``a8``: their static activation ranges moved from +2.9% to
        +6.1% over float on the tutorial text (+3.8% to +3.4% held out)."""
        return self.gptq and not self.dtype.quantizes_activations

    @property
    def smooth(self) -> bool:
        return self.optimization_level >= 1 and self.dtype.quantizes_activations


@dataclass
class LayerResult:
    dtype: QuantDtype
    qweight: torch.Tensor
    scales: torch.Tensor
    act_scale: float | None = None
    rel_error: float | None = None


@dataclass
class BuildReport:
    """What the build did, for the export manifest and the log."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    smoothed_groups: int = 0
    calibration_samples: int = 0
    calibration_tokens: int = 0
    hybrid_layers: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- model structure


def target_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers the NPU quantizes: all of them except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and mod is not head
    }


def decoder_layers(model: nn.Module, targets: dict[str, nn.Linear]) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: the one that holds the most quantized layers."""
    best: tuple[str, nn.ModuleList] | None = None
    best_count = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            count = sum(1 for t in targets if t.startswith(name + "."))
            if count > best_count:
                best, best_count = (name, mod), count
    if best is None:
        raise QuantizationError("no decoder layers with Linear modules found in the model")
    return best


def check_group_sizes(targets: dict[str, nn.Linear], dtype: QuantDtype) -> None:
    """Raise :class:`BuildConfigError` naming the first layer the group size does not divide."""
    for name, lin in targets.items():
        check_group_size(dtype, name, lin.in_features, lin.out_features)


def round_float_params_to_fp16(model: nn.Module) -> None:
    """Round every floating parameter and persistent buffer to fp16 values (dtype kept).

    Non-persistent buffers (rotary frequencies …) are recomputed by the model's constructor
    when an export is loaded, so they are left exactly as the constructor made them.
    """
    lim = torch.finfo(torch.float16).max
    with torch.no_grad():
        seen: set[int] = set()
        for t in model.state_dict().values():
            if t.is_floating_point() and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                t.copy_(t.clamp(-lim, lim).to(torch.float16).to(t.dtype))


# --------------------------------------------------------------------------- observation


@dataclass
class _InputStats:
    absmax: torch.Tensor
    sumsq: torch.Tensor
    n: int = 0
    hist: AbsHistogram | None = None
    rows: list[torch.Tensor] = field(default_factory=list)


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, nn.LayerNorm) or type(mod).__name__.lower().endswith("norm")


@torch.no_grad()
def observe(
    model: nn.Module,
    batches: list[torch.Tensor],
    targets: dict[str, nn.Linear],
    layers: nn.ModuleList,
    want_hist: bool,
    want_replay: bool,
    want_rows: bool = False,
) -> tuple[dict[str, _InputStats], dict[str, str], list[list[dict[str, Any]]], list[torch.Tensor]]:
    """Run the float model once over ``batches`` and record what the build needs.

    Returns per-Linear input statistics, the norm feeding each Linear, the keyword arguments of
    every decoder layer call (``[layer][batch]``) and the first layer's input per batch.
    """
    stats: dict[str, _InputStats] = {}
    feeds: dict[str, str] = {}
    norm_outputs: dict[int, tuple[str, torch.Tensor]] = {}
    layer_kwargs: list[list[dict[str, Any]]] = [[] for _ in layers]
    first_inputs: list[torch.Tensor] = []
    handles = []

    def norm_hook(name: str):
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                norm_outputs[id(out)] = (name, out)

        return hook

    # Linear layers reading the same tensor (q/k/v, gate/up) share one statistics object:
    # the statistics are computed once per distinct input of each forward pass
    same_input: dict[int, tuple[torch.Tensor, _InputStats]] = {}

    def lin_hook(name: str, lin: nn.Linear):
        def hook(_m: nn.Module, inp: tuple[Any, ...]) -> None:
            x = inp[0]
            src = norm_outputs.get(id(x))
            if src is not None and src[1] is x:
                feeds.setdefault(name, src[0])
            shared = same_input.get(id(x))
            if shared is not None and shared[0] is x:
                stats[name] = shared[1]
                return
            st = stats.get(name)
            if st is None:
                st = stats[name] = _InputStats(
                    torch.zeros(lin.in_features),
                    torch.zeros(lin.in_features),
                    hist=AbsHistogram() if want_hist else None,
                )
            same_input[id(x)] = (x, st)
            x2 = x.detach().reshape(-1, lin.in_features).float().cpu()
            st.absmax = torch.maximum(st.absmax, x2.abs().amax(dim=0))
            st.sumsq += (x2**2).sum(dim=0)
            st.n += x2.shape[0]
            if st.hist is not None:
                st.hist.update(x2)
            if want_rows:
                st.rows.append(_sample_rows(x2))

        return hook

    def layer_hook(index: int):
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not want_replay:
                return
            kw = dict(kwargs)
            hidden = _first_tensor(args, kw)
            kw.pop("hidden_states", None)
            # extra positional arguments are rare (older remote-code models); keep them
            kw["__args__"] = tuple(args[1:])
            layer_kwargs[index].append(kw)
            if index == 0:
                first_inputs.append(hidden.detach().clone())

        return hook

    for name, mod in model.named_modules():
        if _is_norm(mod):
            handles.append(mod.register_forward_hook(norm_hook(name)))
    for name, lin in targets.items():
        handles.append(lin.register_forward_pre_hook(lin_hook(name, lin)))
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(layer_hook(i), with_kwargs=True))
    try:
        for ids in tqdm(batches, desc="calibration", unit="batch"):
            # only the hooks' records are wanted: one position of logits spares the output
            # head's matmul over every token (a quarter of Qwen2.5-0.5B's forward pass)
            model(input_ids=ids, use_cache=False, **_one_logit(model))
            norm_outputs.clear()
            same_input.clear()
    finally:
        for h in handles:
            h.remove()
    return stats, feeds, layer_kwargs, first_inputs


def _one_logit(model: nn.Module) -> dict[str, int]:
    """``logits_to_keep=1`` where the model's forward takes it (transformers >= 4.50)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def channel_magnitude(st: _InputStats, kind: str) -> torch.Tensor:
    """Per-input-channel magnitude of the calibration activations: ``max`` or ``rms``."""
    if kind == "max":
        return st.absmax
    if kind == "rms":
        return (st.sumsq / max(st.n, 1)).sqrt()
    raise ValueError(f"unknown channel statistic {kind!r}")


def norm_groups(feeds: dict[str, str]) -> list[SmoothGroup]:
    """Group the Linear layers by the normalisation layer that feeds them."""
    by_norm: dict[str, list[str]] = {}
    for lin, norm in feeds.items():
        by_norm.setdefault(norm, []).append(lin)
    return [SmoothGroup(norm, "norm", lins) for norm, lins in by_norm.items()]


# --------------------------------------------------------------------------- quantization


def _relative_error(w: torch.Tensor, dtype: QuantDtype, channel_ms: torch.Tensor) -> float:
    """Output-error proxy of rounding to nearest.

    ``sum_j E[x_j^2] ||dW_j||^2 / sum_j E[x_j^2] ||W_j||^2`` over input channels j.
    """
    q, s = quantize_weight(w, dtype)
    dw = dequantize_weight(q, s, dtype.group_size) - w.float()
    num = (dw.pow(2).sum(0) * channel_ms).sum()
    den = (w.float().pow(2).sum(0) * channel_ms).sum().clamp_min(1e-30)
    return float(num / den)


def alternative_group(dtype: QuantDtype, platform: Platform, lin: nn.Linear) -> QuantDtype | None:
    """The hybrid partner of ``dtype`` for one layer (accepted by the platform), or None."""
    if dtype.group_size is not None:
        alt = dtype.family
        return dtype.with_group(None) if alt in platform.dtypes else None
    # smallest group first: the most accurate grouped variant the platform runs
    cand = sorted(
        int(n.split("_g")[1]) for n in platform.dtypes if n.startswith(dtype.family + "_g")
    )
    for g in cand:
        if lin.in_features % g == 0 and lin.out_features % g == 0:
            return dtype.with_group(g)
    return None


def choose_dtypes(
    plan: BuildPlan, targets: dict[str, nn.Linear], stats: dict[str, _InputStats]
) -> dict[str, QuantDtype]:
    """Each layer's dtype: the plan's, except ``hybrid_rate`` of them switched to the partner.

    Ungrouped dtypes switch the layers with the largest quantization error (to a grouped
    variant, for accuracy); grouped dtypes switch those whose ungrouped error is smallest (for
    speed at the least cost).
    """
    chosen = {name: plan.dtype for name in targets}
    if plan.hybrid_rate <= 0:
        return chosen
    n_switch = round(plan.hybrid_rate * len(targets))
    scored = []
    for name, lin in targets.items():
        alt = alternative_group(plan.dtype, plan.platform, lin)
        if alt is None:
            continue
        st = stats.get(name)
        ms = (st.sumsq / max(st.n, 1)).float() if st is not None else torch.ones(lin.in_features)
        err_primary = _relative_error(lin.weight.detach(), plan.dtype, ms)
        err_alt = _relative_error(lin.weight.detach(), alt, ms)
        # ungrouped -> grouped: largest gain first; grouped -> ungrouped: least extra error
        # first. Both orderings are "largest err_primary - err_alt first".
        scored.append((err_primary - err_alt, name, alt))
    scored.sort(key=lambda t: t[0], reverse=True)
    for _, name, alt in scored[:n_switch]:
        chosen[name] = alt
    return chosen


def _layer_forward(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    kw = dict(kwargs)
    extra = kw.pop("__args__", ())
    out = layer(hidden, *extra, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def sequential_gptq(
    plan: BuildPlan,
    targets: dict[str, nn.Linear],
    layers_name: str,
    layers: nn.ModuleList,
    dtypes: dict[str, QuantDtype],
    layer_kwargs: list[list[dict[str, Any]]],
    first_inputs: list[torch.Tensor],
    hists: dict[str, AbsHistogram],
) -> dict[str, LayerResult]:
    """GPTQ, one decoder layer at a time, each fed by the quantized layers before it."""
    results: dict[str, LayerResult] = {}
    hidden = list(first_inputs)
    want_hist = plan.act_mode == "static"
    for index, layer in enumerate(tqdm(layers, desc="GPTQ", unit="layer")):
        prefix = f"{layers_name}.{index}."
        mine = {n: m for n, m in targets.items() if n.startswith(prefix)}
        acc = {n: HessianAccumulator(m.in_features) for n, m in mine.items()}
        rows: dict[str, list[torch.Tensor]] = {}
        seen: dict[int, tuple[torch.Tensor, str]] = {}
        handles = []
        for name, lin in mine.items():

            def hook(
                _m: nn.Module,
                inp: tuple[Any, ...],
                name: str = name,
                acc: dict[str, HessianAccumulator] = acc,
                rows: dict[str, list[torch.Tensor]] = rows,
                seen: dict[int, tuple[torch.Tensor, str]] = seen,
            ) -> None:
                prev = seen.get(id(inp[0]))
                if prev is not None and prev[0] is inp[0]:  # q/k/v, gate/up: same input
                    acc[name] = acc[prev[1]]
                    if want_hist:
                        hists[name] = hists[prev[1]]
                        rows[name] = rows[prev[1]]
                    return
                seen[id(inp[0])] = (inp[0], name)
                x = inp[0].reshape(-1, inp[0].shape[-1])
                acc[name].add(x)
                if want_hist:
                    hists.setdefault(name, AbsHistogram()).update(x)
                    rows.setdefault(name, []).append(_sample_rows(x))

            handles.append(lin.register_forward_pre_hook(hook))
        try:
            for b, h in enumerate(hidden):
                _layer_forward(layer, h, layer_kwargs[index][b])
                seen.clear()
        finally:
            for hd in handles:
                hd.remove()
        for name, lin in mine.items():
            dt = dtypes[name]
            try:
                q, s = gptq_quantize(
                    lin.weight,
                    acc[name].h,
                    dt,
                    plan.weight_rule,
                    plan.percentile,
                    damp=plan.gptq_damp(lin.in_features, acc[name].n),
                    act_order=plan.act_order,
                    refit_scales=plan.refinement(plan.refit_scales),
                    weighted_clip=plan.refinement(plan.weighted_clip),
                )
            except torch.linalg.LinAlgError as exc:
                log.warning("GPTQ failed on %s (%s): rounding to nearest instead", name, exc)
                q, s = _rtn(lin.weight, dt, plan)
            results[name] = LayerResult(dt, q, s)
            if want_hist and dt.quantizes_activations:
                t0 = activation_threshold(hists[name], plan.algorithm, 8, plan.percentile)
                results[name].act_scale = (
                    search_act_scale(lin, q, s, dt, torch.cat(rows[name]), t0)
                    if enough_rows(rows[name])
                    else t0 / 127.0
                )
            lin.weight.copy_(dequantize_weight(q, s, dt.group_size).to(lin.weight.dtype))
        for b in range(len(hidden)):
            hidden[b] = _layer_forward(layer, hidden[b], layer_kwargs[index][b])
    return results


def _sample_rows(x: torch.Tensor, top: int = 4, rand: int = 28) -> torch.Tensor:
    """Rows (tokens) of ``x`` kept for the activation clip search: the largest and a few
    random ones, so that outlier tokens (attention sinks) are always represented."""
    x = x.detach().float()
    if x.shape[0] <= top + rand:
        return x.cpu()
    mags = x.abs().amax(dim=1)
    top_idx = mags.topk(top).indices
    g = torch.Generator().manual_seed(x.shape[0])
    rand_idx = torch.randperm(x.shape[0], generator=g)[:rand].to(x.device)
    return x[torch.cat([top_idx, rand_idx])].cpu()


#: Fewer sampled calibration tokens than this and the searches (activation clip, smoothing
#: strength) would fit noise: the calibrator's range and alpha = 0.5 are used instead.
MIN_SEARCH_ROWS = 128


def enough_rows(rows: list[torch.Tensor] | torch.Tensor) -> bool:
    n = rows.shape[0] if isinstance(rows, torch.Tensor) else sum(r.shape[0] for r in rows)
    return n >= MIN_SEARCH_ROWS


#: Clip ratios tried by the static activation-scale search (relative to the calibrator's T).
CLIP_RATIOS = (1.0, 0.85, 0.7, 0.55, 0.45, 0.35, 0.25, 0.18, 0.12, 0.08)


@torch.no_grad()
def search_act_scale(
    lin: nn.Linear,
    q: torch.Tensor,
    s: torch.Tensor,
    dtype: QuantDtype,
    x: torch.Tensor,
    t0: float,
) -> float:
    """The static activation scale (``T / 127``, T = ratio * t0) with the smallest output error.

    The error is that of the simulated integer layer against the float layer on sampled
    calibration tokens; ratio 1 (the calibrator's own choice) is always a candidate.
    """
    w = lin.weight.detach().float().cpu()
    ref = x @ w.t()
    layer = QuantLinear.from_quantized(q.cpu(), s.cpu(), dtype, None, "static", t0 / 127.0)
    best, best_err = t0 / 127.0, float("inf")
    for ratio in CLIP_RATIOS:
        scale = t0 * ratio / 127.0
        layer.act_scale.fill_(scale)
        err = float(((layer(x) - ref) ** 2).sum())
        if err < best_err:
            best, best_err = scale, err
    return best


def _rtn(w: torch.Tensor, dtype: QuantDtype, plan: BuildPlan) -> tuple[torch.Tensor, torch.Tensor]:
    t = weight_threshold(w, dtype, plan.algorithm, plan.percentile)
    return quantize_weight(w, dtype, weight_scales(w, dtype, t))


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


def quantize_model(
    model: nn.Module, plan: BuildPlan, batches: list[torch.Tensor]
) -> tuple[dict[str, QuantLinear], BuildReport]:
    """Quantize ``model`` in place per ``plan``; returns the new layers and a report."""
    report = BuildReport(
        calibration_samples=len(batches),
        calibration_tokens=int(sum(b.numel() for b in batches)),
    )
    targets = target_linears(model)
    layers_name, layers = decoder_layers(model, targets)
    round_float_params_to_fp16(model)
    need_hist = plan.act_mode == "static" and not plan.gptq
    # dynamic activations at level 0 need no calibration at all: pure round-to-nearest
    need_stats = plan.act_mode == "static" or plan.hybrid_rate > 0 or plan.gptq or plan.smooth
    if need_stats and not batches:
        raise QuantizationError("calibration needs at least one sample")
    if plan.gptq:
        warn_if_few_gptq_tokens(report.calibration_tokens, targets)
    stats: dict[str, _InputStats] = {}
    feeds: dict[str, str] = {}
    layer_kwargs: list[list[dict[str, Any]]] = []
    first_inputs: list[torch.Tensor] = []
    if need_stats:
        stats, feeds, layer_kwargs, first_inputs = observe(
            model,
            batches,
            targets,
            layers,
            want_hist=need_hist,
            want_replay=plan.gptq,
            want_rows=plan.smooth,
        )
    missing = [n for n in targets if need_stats and n not in stats]
    if missing:
        raise QuantizationError(
            f"{len(missing)} layer(s) never ran on the calibration data (e.g. {missing[0]}):"
            f" the model's forward pass does not use them"
        )

    if plan.smooth:
        before = _logits(model, batches[0])
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        groups = norm_groups(feeds) + find_mlp_pairs(model, targets)
        absmax = {n: st.absmax for n, st in stats.items()}
        rows = {n: torch.cat(st.rows) for n, st in stats.items() if enough_rows(st.rows)}
        up_fed = {lin for grp in groups if grp.kind == "up" for lin in grp.linears}
        stat = {
            n: channel_magnitude(st, plan.smooth_stat if n in up_fed else plan.smooth_stat_norm)
            for n, st in stats.items()
        }

        report.smoothed_groups = apply_smoothing(
            model, groups, absmax, plan.smooth_alpha, rows=rows, dtype=plan.dtype, act_stat=stat
        )
        del rows
        after = _logits(model, batches[0])
        drift = float((after - before).abs().max() / before.abs().max().clamp_min(1e-6))
        if not torch.isfinite(after).all() or drift > 1e-2:
            log.warning("smoothing changed the float model (drift %.3g): reverted", drift)
            model.load_state_dict(backup)
            report.smoothed_groups = 0
        else:
            log.info("SmoothQuant folded %d groups (drift %.2g)", report.smoothed_groups, drift)
            round_float_params_to_fp16(model)  # folded norm weights must be fp16 values too
            if need_hist or plan.dtype.quantizes_activations:
                # smoothed inputs have new ranges: per-channel scaling changes the histogram
                stats = {}
        del backup

    dtypes = choose_dtypes(plan, targets, {})
    if plan.hybrid_rate > 0:
        if not stats:
            stats, _, _, _ = observe(model, batches, targets, layers, False, False)
        dtypes = choose_dtypes(plan, targets, stats)
        report.hybrid_layers = [n for n, d in dtypes.items() if d != plan.dtype]
    for name, lin in targets.items():
        check_group_size(dtypes[name], name, lin.in_features, lin.out_features)

    hists: dict[str, AbsHistogram] = {}
    if plan.gptq:
        results = sequential_gptq(
            plan, targets, layers_name, layers, dtypes, layer_kwargs, first_inputs, hists
        )
    else:
        if plan.act_mode == "static":
            if not stats or any(st.hist is None for st in stats.values()):
                stats, _, _, _ = observe(model, batches, targets, layers, True, False)
            hists = {n: st.hist for n, st in stats.items() if st.hist is not None}
        results = {}
        for name, lin in tqdm(targets.items(), desc="quantize", unit="layer"):
            q, s = _rtn(lin.weight, dtypes[name], plan)
            results[name] = LayerResult(dtypes[name], q, s)

    new_layers: dict[str, QuantLinear] = {}
    for name, lin in targets.items():
        res = results[name]
        act_scale = res.act_scale
        if act_scale is None and plan.act_mode == "static" and res.dtype.quantizes_activations:
            t = activation_threshold(hists[name], plan.algorithm, 8, plan.percentile)
            act_scale = t / 127.0
        bias = lin.bias.detach() if lin.bias is not None else None
        ql = QuantLinear.from_quantized(
            res.qweight, res.scales, res.dtype, bias, act_mode=plan.act_mode, act_scale=act_scale
        )
        new_layers[name] = ql
        report.layers[name] = {
            "dtype": res.dtype.name,
            "act_scale": act_scale,
            "in_features": lin.in_features,
            "out_features": lin.out_features,
        }
    replace_modules(model, new_layers)
    return new_layers, report


#: GPTQ wants at least this many calibration tokens per input feature of its widest layer.
#: Measured on Qwen2.5-Coder-0.5B w4a16_g128 (widest input 4864): 4k calibration tokens
#: recovered 14% of round-to-nearest's perplexity loss, 12k 30%, 16k 39%, 25k 42%.
GPTQ_TOKENS_PER_INPUT = 4


def warn_if_few_gptq_tokens(tokens: int, targets: dict[str, nn.Linear]) -> bool:
    """Log a warning (and return True) when the calibration set is too small for GPTQ's
    Hessian estimates: below a few tokens per input feature GPTQ fits the calibration text
    rather than the model, and recovers little of the rounding loss."""
    widest = max(lin.in_features for lin in targets.values())
    wanted = GPTQ_TOKENS_PER_INPUT * widest
    if tokens >= wanted:
        return False
    log.warning(
        "GPTQ calibration has %d tokens for layers with up to %d inputs; about %d or more"
        " (%d per input) make its accuracy optimisation effective: add calibration samples",
        tokens,
        widest,
        wanted,
        GPTQ_TOKENS_PER_INPUT,
    )
    return True


def replace_modules(model: nn.Module, new: dict[str, nn.Module]) -> None:
    """Put each module of ``new`` at its dotted name in ``model``."""
    for name, mod in new.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod)


def validate_plan_against_model(plan: BuildPlan, model: nn.Module) -> None:
    """Group sizes must divide every quantized layer (checked before any work)."""
    targets = target_linears(model)
    if not targets:
        raise BuildConfigError("the model has no Linear layers to quantize")
    check_group_sizes(targets, plan.dtype)
