"""The toolkit's portable quantized export (``NAME.rkllm-pc/``): identify it and load it.

The toolkit writes it (:mod:`rkllm_core.toolkit.export`); the PC engine and ``rkllm info`` read
it through this module, so neither depends on the toolkit's build code. The layout:

``rkllm-pc.json``
    the manifest: format and version, quantized dtype, group size, algorithm, optimisation
    level, activation mode, target platform, NPU cores, max_context, hybrid rate, the source
    model and its sha256, a calibration summary, and one entry per quantized layer.
``model.safetensors``
    for each quantized Linear ``NAME``: ``NAME.qweight`` (int8 [out, in] for 8-bit weights;
    uint8 [out, in/2] for 4-bit weights, two's-complement nibbles, low nibble = even input
    column), ``NAME.scales`` (fp16 [out, in/group], one per output channel when ungrouped),
    ``NAME.act_scale`` (fp32 scalar, static a8 only) and ``NAME.bias`` (fp16); every other
    parameter in fp16 (the values the simulation uses). Weights are ``q * s``.
``config.json``, tokenizer files, chat template, ``generation_config.json``
    as saved by transformers, so the tokenizer and the architecture load with no extra code.

:func:`load_export` rebuilds the transformers model with the same ``QuantLinear`` modules (the
simulated NPU arithmetic, ``rkllm_core.toolkit.quant.qlinear``) the in-memory build uses, so
the logits are the same bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, ModelNotFoundError

FORMAT_NAME = "rkllm-pc"
FORMAT_VERSION = 1
SUFFIX = ".rkllm-pc"
MANIFEST = "rkllm-pc.json"
WEIGHTS = "model.safetensors"


def is_export(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory written by the toolkit's export (reads only the
    manifest)."""
    p = Path(path)
    manifest = p / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an export, checked for format and version."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"{p} does not exist")
    if not is_export(p):
        raise ModelFormatError(f"{p} is not an rkllm-pc export (no valid {MANIFEST})")
    data = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelFormatError(f"{p / MANIFEST}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{p} was written by a newer rkllm-py (format version {version},"
            f" this one reads up to {FORMAT_VERSION}): upgrade rkllm-py"
        )
    if not isinstance(data.get("layers", {}), dict):
        raise ModelFormatError(f"{p / MANIFEST}: 'layers' must be an object")
    return data


def load_export(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Load an export: ``(model, tokenizer)``, a transformers causal LM in eval mode.

    The model's quantized Linear layers are :class:`~.quant.qlinear.QuantLinear` built from the
    stored integers and scales; its manifest is ``model.rkllm_manifest``.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # The simulated NPU arithmetic lives with the toolkit's quantizers, which build it too.
    from ..toolkit.quant.formats import parse_dtype, unpack_int4
    from ..toolkit.quant.pipeline import replace_modules
    from ..toolkit.quant.qlinear import QuantLinear

    p = Path(path)
    manifest = read_manifest(p)
    tensors = load_file(str(p / manifest.get("weights", WEIGHTS)))
    config = AutoConfig.from_pretrained(p)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights  # type: ignore[assignment]
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    model = model.float()

    new: dict[str, Any] = {}
    for name, info in manifest["layers"].items():
        dt = parse_dtype(info["dtype"])
        qw = tensors.pop(f"{name}.qweight")
        q = unpack_int4(qw) if dt.weight_bits == 4 else qw
        if tuple(q.shape) != (info["out_features"], info["in_features"]):
            raise ModelFormatError(
                f"{p}: layer {name} has shape {tuple(q.shape)}, manifest disagrees"
            )
        bias = tensors.pop(f"{name}.bias", None)
        act_scale = tensors.pop(f"{name}.act_scale", None)
        new[name] = QuantLinear.from_quantized(
            q,
            tensors.pop(f"{name}.scales"),
            dt,
            bias.float() if bias is not None else None,
            act_mode=info.get("act_mode"),
            act_scale=act_scale,
        )
    replace_modules(model, new)
    for alias, target in manifest.get("aliases", {}).items():
        tensors[alias] = tensors[target]
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    quant_keys = tuple(n + "." for n in new)
    missing = [k for k in missing if not k.startswith(quant_keys)]
    if missing or unexpected:
        raise ModelFormatError(
            f"{p}: weights do not match the architecture (missing {missing[:3]},"
            f" unexpected {unexpected[:3]})"
        )
    model.eval()
    model.rkllm_manifest = manifest
    tokenizer = AutoTokenizer.from_pretrained(p)
    return model, tokenizer
