"""Export a toolkit build as a Hugging Face GPTQ checkpoint (AutoGPTQ format v1, symmetric).

Rockchip's own toolkit (``load_huggingface``) accepts GPTQ checkpoints that are symmetric with
``desc_act`` false: 4-bit with group 32, 64 or 128, 8-bit with group 128, 256 or 512, or either
width per output channel. Every :class:`~.quant.qlinear.QuantLinear` dtype of an rkllm-py build
maps onto one of those exactly, so :func:`write_gptq` writes our integers and scales unchanged
in the layout that AutoGPTQ, GPTQModel and transformers (through optimum) read.

The directory holds:

``model.safetensors`` (safetensors metadata ``format = pt``, as transformers requires)
    For each quantized Linear ``NAME`` (every Linear except the output head), with
    ``bits`` = 4 or 8, ``pack = 32 / bits``, ``in`` / ``out`` its features, ``G`` its group
    size (``in`` for a per-channel dtype) and ``n_groups = in / G``:

    ``NAME.qweight`` int32 [in / pack, out]
        the unsigned integers ``u = q + 2^(bits-1)`` (``q + 8`` for 4-bit, in [0, 15];
        ``q + 128`` for 8-bit, in [1, 255]) of our signed weights ``q`` [out, in],
        transposed to [in, out] and packed along the input dimension: input row
        ``j * pack + i`` occupies bits ``[i * bits, (i + 1) * bits)`` of packed row ``j``,
        lowest bits first. The 32-bit words are stored as int32 (two's complement), so a
        word whose top bit is set reads as a negative number.
    ``NAME.qzeros`` int32 [n_groups, out / pack]
        the zero point ``2^(bits-1)`` minus one, as the v1 format stores it (7 for 4-bit,
        127 for 8-bit), packed along the output dimension the same way (every word is
        ``0x77777777`` for 4-bit and ``0x7F7F7F7F`` for 8-bit).
    ``NAME.scales`` fp16 [n_groups, out]
        the transpose of our fp16 scales [out, n_groups].
    ``NAME.g_idx`` int32 [in]
        ``column // G`` (all zeros for a per-channel dtype).
    ``NAME.bias`` fp16 [out]
        when the layer has one.

    Dequantization, ``w[o, i] = scales[g_idx[i], o] * (u[i, o] - (zero[g_idx[i], o] + 1))``,
    equals our ``q[o, i] * s[o, i // G]`` exactly (small integers times fp16 values).

    Every other parameter (embeddings, norms, the unquantized output head) in fp16 under the
    model's own names; a head tied to the embeddings is stored once, as transformers does.
``config.json``
    the model's config with ``"torch_dtype": "float16"`` and ``"quantization_config"``:
    ``{"quant_method": "gptq", "bits": B, "group_size": G or -1, "desc_act": false,
    "sym": true, "static_groups": false, "true_sequential": true, "damp_percent": 0.01,
    "checkpoint_format": "gptq"}``.
``quantize_config.json``
    AutoGPTQ's copy of the same fields (plus ``model_file_base_name`` = ``"model"``).
tokenizer files (with the chat template), ``generation_config.json``
    as saved by transformers.
``rkllm_activation_scales.json`` (``a8`` dtypes only)
    A GPTQ checkpoint quantizes weights only; its consumer recalibrates int8 activations.
    So that nothing of our build is lost, this file records the activation mode and, for
    static activations, each layer's per-tensor int8 scale
    (``x_q = clamp(round(x / scale), -127, 127)``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExportError

if TYPE_CHECKING:
    import torch

    from .quant.qlinear import QuantLinear

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
QUANTIZE_CONFIG = "quantize_config.json"
ACT_SCALES = "rkllm_activation_scales.json"
#: Group sizes Rockchip's toolkit accepts in a GPTQ checkpoint, per weight width (None: per
#: output channel, written as ``group_size: -1``).
ROCKCHIP_GPTQ_GROUPS: dict[int, tuple[int | None, ...]] = {
    4: (None, 32, 64, 128),
    8: (None, 128, 256, 512),
}
#: Recorded for loaders that read it; our integers come from rkllm-py's own calibration, so
#: these describe the format (symmetric, plain column order) rather than how it was made.
DAMP_PERCENT = 0.01


def pack_rows(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-wide values [n, m] along dim 0 into int32 [n * bits / 32, m].

    Row ``j * pack + i`` lands in bits ``[i * bits, (i + 1) * bits)`` of packed row ``j``
    (``pack = 32 / bits``); the 32-bit words are returned as two's-complement int32.
    """
    import torch

    pack = 32 // bits
    n, m = u.shape
    if n % pack:
        raise ExportError(f"cannot pack {n} rows of {bits}-bit values into 32-bit words")
    v = u.to(torch.int64).reshape(n // pack, pack, m)
    shifts = (torch.arange(pack, dtype=torch.int64) * bits).reshape(1, pack, 1)
    # the fields are disjoint, so the sum is their bitwise or
    words = (v << shifts).sum(dim=1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous()


def quantization_config(bits: int, group_size: int | None) -> dict[str, Any]:
    """The ``quantization_config`` of ``config.json`` for a symmetric v1 GPTQ checkpoint."""
    return {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size if group_size is not None else -1,
        "desc_act": False,
        "sym": True,
        "static_groups": False,
        "true_sequential": True,
        "damp_percent": DAMP_PERCENT,
        "checkpoint_format": "gptq",
    }


def check_gptq_layers(layers: dict[str, QuantLinear]) -> tuple[int, int | None]:
    """``(bits, group_size)`` shared by all ``layers``; ExportError if GPTQ cannot hold them."""
    if not layers:
        raise ExportError(
            "the build has no quantized layers: a GPTQ checkpoint holds quantized weights;"
            " build() with do_quantization=True, or export_rkllm() for an fp16 export"
        )
    kinds: dict[tuple[int, int | None], list[str]] = {}
    for name, mod in layers.items():
        kinds.setdefault((mod.qdtype.weight_bits, mod.qdtype.group_size), []).append(name)
    if len(kinds) > 1:
        desc = ", ".join(
            f"{len(names)} with {bits}-bit {'group ' + str(g) if g else 'per-channel'}"
            f" (e.g. {names[0]})"
            for (bits, g), names in kinds.items()
        )
        raise ExportError(
            f"a GPTQ checkpoint has one bit width and group size for every layer, but this build"
            f" mixes them ({desc}; hybrid_rate > 0 does this): build with hybrid_rate=0 to"
            f" export GPTQ, or use export_rkllm() which keeps per-layer dtypes"
        )
    ((bits, group),) = kinds
    dtype = next(iter(layers.values())).qdtype.name
    allowed = ROCKCHIP_GPTQ_GROUPS.get(bits)
    if allowed is None or group not in allowed:
        accepted = "; ".join(
            f"{b}-bit: " + ", ".join(f"group {g}" if g else "per-channel" for g in gs)
            for b, gs in ROCKCHIP_GPTQ_GROUPS.items()
        )
        raise ExportError(
            f"{dtype} ({bits}-bit weights, {'group ' + str(group) if group else 'per-channel'})"
            f" is not a GPTQ layout Rockchip's toolkit accepts ({accepted}): build with one of"
            f" those dtypes, or use export_rkllm()"
        )
    pack = 32 // bits
    for name, mod in layers.items():
        bad = [
            f"{what} {n}"
            for what, n in (("in", mod.in_features), ("out", mod.out_features))
            if n % pack
        ]
        if bad:
            raise ExportError(
                f"layer {name} has {', '.join(bad)} features, not a multiple of {pack}: GPTQ"
                f" packs {pack} {bits}-bit values per 32-bit word, so this model cannot be"
                f" exported as GPTQ; use export_rkllm()"
            )
        q = mod.qweight
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
            raise ExportError(f"layer {name}: weight integers outside [{lo}, {hi}]")
    return bits, group


def gptq_tensors(mod: QuantLinear, bits: int) -> dict[str, torch.Tensor]:
    """One layer's GPTQ tensors: ``qweight``, ``qzeros``, ``scales``, ``g_idx`` (and ``bias``)."""
    import torch

    offset = 2 ** (bits - 1)
    group = mod.qdtype.group_size or mod.in_features
    n_groups = mod.in_features // group
    u = mod.qweight.to(torch.int64).t() + offset  # [in, out], unsigned
    # v1 checkpoints store zero - 1 (AutoGPTQ's historical off-by-one; loaders add the 1 back)
    zeros = torch.full((mod.out_features, n_groups), offset - 1, dtype=torch.int64)
    out = {
        "qweight": pack_rows(u, bits),
        "qzeros": pack_rows(zeros, bits).t().contiguous(),
        "scales": mod.scales.to(torch.float16).t().contiguous(),
        "g_idx": (torch.arange(mod.in_features, dtype=torch.int64) // group).to(torch.int32),
    }
    if mod.bias is not None:
        out["bias"] = mod.bias.detach().to(torch.float16)
    return out


def write_gptq(
    path: str | os.PathLike[str],
    model: Any,
    tokenizer: Any,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """Write the built ``model`` as a GPTQ checkpoint directory at ``path`` (atomically).

    ``path`` must not exist, or be an empty directory: an existing non-empty directory is
    never overwritten. Raises :class:`~rkllm_core.errors.ExportError` when the build cannot be
    represented (see :func:`check_gptq_layers`); nothing is left behind on any failure.
    """
    from safetensors.torch import save_file

    from .export import float_tensors, quant_layers, save_hf_files, write_atomically

    manifest = manifest or {}
    dest = Path(path).expanduser().absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(
            f"{dest} exists and is not an empty directory; refusing to overwrite it: choose a"
            f" new path (e.g. model-gptq) or remove it first"
        )
    if not dest.parent.is_dir():
        raise ExportError(f"cannot export to {dest}: directory {dest.parent} does not exist")

    layers = quant_layers(model)
    bits, group = check_gptq_layers(layers)
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in layers.items():
        for suffix, t in gptq_tensors(mod, bits).items():
            tensors[f"{name}.{suffix}"] = t
    floats, aliases = float_tensors(model, layers)
    tensors.update(floats)
    if not getattr(model.config, "tie_word_embeddings", False):
        # loaders only re-tie what the config says is tied: store shared tensors under each name
        for alias, target in aliases.items():
            tensors[alias] = floats[target].clone()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    qcfg = quantization_config(bits, group)
    act_modes = {mod.act_mode for mod in layers.values()} - {None}
    act_info: dict[str, Any] | None = None
    if act_modes:
        mode = act_modes.pop() if len(act_modes) == 1 else "mixed"
        log.warning(
            "%s quantizes activations to int8, which a GPTQ checkpoint cannot express: its"
            " consumer (e.g. Rockchip's toolkit) recalibrates them; rkllm-py's %s activation"
            " quantization (and its static scales) is recorded in %s",
            manifest.get("quantized_dtype", "this build"),
            mode,
            ACT_SCALES,
        )
        act_info = {
            "format": "rkllm-activation-scales",
            "version": 1,
            "quantized_dtype": manifest.get("quantized_dtype"),
            "activation_bits": 8,
            "activation_mode": mode,
            "rule": "x_q = clamp(round(x / scale), -127, 127), one scale per tensor"
            + {
                "static": "",
                "dynamic": "; dynamic: scale = max|x| / 127 of each call",
                "per_token": "; per_token: scale = max|x_t| / 127 of each token",
            }.get(str(mode), ""),
            "layers": {
                name: float(mod.act_scale)
                for name, mod in layers.items()
                if mod.act_mode == "static" and mod.act_scale is not None
            },
        }

    def fill(tmp: Path) -> None:
        save_file(
            tensors,
            str(tmp / WEIGHTS),
            # transformers refuses safetensors files whose "format" is not "pt"
            metadata={"format": "pt", "quantizer": "rkllm-py"},
        )
        save_hf_files(tmp, model, tokenizer)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["quantization_config"] = qcfg
        cfg["torch_dtype"] = "float16"
        cfg["dtype"] = "float16"  # the key transformers >= 4.56 writes and reads
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        qc = dict(qcfg)
        qc.update({"model_name_or_path": None, "model_file_base_name": "model"})
        (tmp / QUANTIZE_CONFIG).write_text(json.dumps(qc, indent=2) + "\n", encoding="utf-8")
        if act_info is not None:
            (tmp / ACT_SCALES).write_text(json.dumps(act_info, indent=2) + "\n", encoding="utf-8")

    write_atomically(dest, fill)
    log.info(
        "exported GPTQ checkpoint %s (%d-bit, group %s, %d quantized layers)",
        dest,
        bits,
        group if group is not None else "per-channel",
        len(layers),
    )
    return dest
