"""The portable quantized export (``NAME.rkllm-pc/``) and its loader for the PC engine.

Rockchip's ``.rkllm`` files are an undocumented NPU format; rkllm-py never writes a file with
that name unless Rockchip's own toolkit produced it. What we write instead is a directory whose
name ends in ``.rkllm-pc`` (the suffix is a convention, the manifest is what identifies it):

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

:func:`load_export` rebuilds the transformers model with the same
:class:`~.quant.qlinear.QuantLinear` modules the in-memory build uses, so the logits are the
same bit for bit.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExportError, ModelFormatError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from .quant.qlinear import QuantLinear

log = logging.getLogger(__name__)

FORMAT_NAME = "rkllm-pc"
FORMAT_VERSION = 1
SUFFIX = ".rkllm-pc"
MANIFEST = "rkllm-pc.json"
WEIGHTS = "model.safetensors"


def is_export(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory written by :func:`write_export` (reads only the manifest)."""
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
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFormatError(
            f"{p} was written by a newer rkllm-py (format version {data['format_version']},"
            f" this one reads up to {FORMAT_VERSION}): upgrade rkllm-py"
        )
    return data


def write_export(
    path: str | os.PathLike[str],
    model: Any,
    tokenizer: Any,
    manifest: dict[str, Any],
) -> Path:
    """Write ``model`` (with its QuantLinear layers) atomically to the directory ``path``.

    Everything goes to a temporary sibling directory first, which is renamed into place at the
    end, so an interrupted export leaves nothing behind. An existing export at ``path`` is
    replaced; any other existing file or directory is left alone and the export refused.
    """
    import torch
    from safetensors.torch import save_file

    from .quant.formats import pack_int4

    dest = Path(path).expanduser().absolute()
    if dest.exists() and not is_export(dest):
        raise ExportError(
            f"{dest} exists and is not an rkllm-pc export; refusing to overwrite it: choose"
            f" another path (e.g. ending in {SUFFIX})"
        )
    if not dest.parent.is_dir():
        raise ExportError(f"cannot export to {dest}: directory {dest.parent} does not exist")

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    qlayers = quant_layers(model)
    for name, mod in qlayers.items():
        q = mod.qweight
        tensors[f"{name}.qweight"] = pack_int4(q) if mod.qdtype.weight_bits == 4 else q
        tensors[f"{name}.scales"] = mod.scales.to(torch.float16)
        if mod.bias is not None:
            tensors[f"{name}.bias"] = mod.bias.to(torch.float16)
        if mod.act_mode == "static":
            tensors[f"{name}.act_scale"] = mod.act_scale.float().reshape(())
        layers[name] = {
            "dtype": mod.qdtype.name,
            "group_size": mod.qdtype.group_size,
            "act_mode": mod.act_mode,
            "in_features": mod.in_features,
            "out_features": mod.out_features,
            "bias": mod.bias is not None,
        }
    floats, aliases = float_tensors(model, qlayers)
    tensors.update(floats)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    full = dict(manifest)
    full.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "weights": WEIGHTS,
            "layers": layers,
            "aliases": aliases,
            "int4_packing": "two's complement nibbles, low nibble = even input column",
        }
    )

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT_NAME})
        save_hf_files(tmp, model, tokenizer)
        # the manifest goes last: a directory without it is never mistaken for an export
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")

    write_atomically(dest, fill)
    log.info(
        "exported %s (%s, %d quantized layers)", dest, manifest.get("quantized_dtype"), len(layers)
    )
    return dest


# --------------------------------------------------------------------------- shared helpers
# (also used by the GPTQ export, :mod:`.gptq_export`)


def quant_layers(model: Any) -> dict[str, QuantLinear]:
    """The model's :class:`~.quant.qlinear.QuantLinear` modules by dotted name, in model order."""
    from .quant.qlinear import QuantLinear

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, QuantLinear)}


def float_tensors(
    model: Any, quantized: Iterable[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every state-dict entry outside the ``quantized`` modules: ``(tensors, aliases)``.

    Floating tensors are converted to fp16 (the build rounded them to fp16 values, so this is
    exact). A tensor shared by several names (tied ``lm_head`` = ``embed_tokens``) is stored once,
    under the first name; ``aliases`` maps each other name to that one.
    """
    import torch

    prefixes = tuple(name + "." for name in quantized)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_ptr: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, t in model.state_dict().items():
        if prefixes and key.startswith(prefixes):
            continue
        ident = (t.data_ptr(), tuple(t.shape))
        if ident in by_ptr:
            aliases[key] = by_ptr[ident]
            continue
        by_ptr[ident] = key
        t = t.detach().cpu()
        tensors[key] = (t.to(torch.float16) if t.is_floating_point() else t).contiguous()
    return tensors, aliases


def save_hf_files(directory: Path, model: Any, tokenizer: Any) -> None:
    """Save ``config.json`` (without a source quantization config), generation config, tokenizer."""
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")  # the GGUF source's, not ours
    cfg.save_pretrained(directory)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(directory)
        except (ValueError, TypeError) as exc:  # invalid sampling defaults in the source
            log.debug("generation_config not exported: %s", exc)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def write_atomically(dest: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write a fresh temporary sibling of ``dest``, then move it into place.

    Whatever is at ``dest`` is replaced (the caller decides whether that is allowed). If
    ``fill`` or the move fails, the temporary directory is removed and ``dest`` is restored,
    so an interrupted export leaves nothing behind.
    """
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        fill(tmp)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_export(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Load an export: ``(model, tokenizer)``, a transformers causal LM in eval mode.

    The model's quantized Linear layers are :class:`~.quant.qlinear.QuantLinear` built from the
    stored integers and scales; its manifest is ``model.rkllm_manifest``.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .quant.formats import parse_dtype, unpack_int4
    from .quant.pipeline import replace_modules
    from .quant.qlinear import QuantLinear

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

    new: dict[str, QuantLinear] = {}
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
