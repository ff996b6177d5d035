"""Write the portable quantized export (``NAME.rkllm-pc/``); reading it is
:mod:`rkllm_core.formats.export` (re-exported here for the toolkit's users).

Rockchip's ``.rkllm`` files are an undocumented NPU format; rkllm-py never writes a file with
that name unless Rockchip's own toolkit produced it. What we write instead is a directory whose
name ends in ``.rkllm-pc`` (the suffix is a convention, the manifest is what identifies it);
its layout is described in :mod:`rkllm_core.formats.export`.
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

from ..errors import ExportError
from ..formats.export import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    SUFFIX,
    WEIGHTS,
    is_export,
    load_export,
    read_manifest,
)

if TYPE_CHECKING:
    import torch

    from .quant.qlinear import QuantLinear

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "SUFFIX", "WEIGHTS", "is_export",
    "load_export", "read_manifest", "write_export",
]


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
