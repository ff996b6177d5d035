"""Merge a PEFT LoRA directory into its base model's weights (no peft dependency)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, ModelNotFoundError

log = logging.getLogger(__name__)


def merge_lora(model: Any, lora_dir: str | Path) -> int:
    """Add ``scale * B @ A`` of every LoRA pair in ``lora_dir`` to ``model``; returns the count.

    ``lora_dir`` holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``use_rslora``) and
    ``adapter_model.safetensors`` (or ``.bin``) as written by peft.
    """
    import torch

    d = Path(lora_dir).expanduser()
    cfg_path = d / "adapter_config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"LoRA directory {d} has no adapter_config.json")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA").upper() != "LORA":
        raise ModelFormatError(f"{d} is a {cfg.get('peft_type')} adapter; only LoRA is supported")
    r = int(cfg.get("r", 8))
    alpha = float(cfg.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    if (d / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        weights = load_file(str(d / "adapter_model.safetensors"))
    elif (d / "adapter_model.bin").is_file():
        weights = torch.load(d / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelNotFoundError(f"LoRA directory {d} has no adapter_model.safetensors")
    modules = dict(model.named_modules())
    merged = 0
    with torch.no_grad():
        for key, a in weights.items():
            if ".lora_A." not in key:
                continue
            base = key.split(".lora_A.")[0]
            b = weights.get(key.replace(".lora_A.", ".lora_B."))
            name = base.removeprefix("base_model.model.")
            target = modules.get(name)
            if b is None or target is None or not hasattr(target, "weight"):
                raise ModelFormatError(
                    f"LoRA weight {key} has no matching module {name!r} in the base model:"
                    f" model_lora must be an adapter of this model"
                )
            delta = (b.float() @ a.float()) * scale
            if delta.shape != target.weight.shape:
                raise ModelFormatError(
                    f"LoRA delta for {name} has shape {tuple(delta.shape)} but the base layer is"
                    f" {tuple(target.weight.shape)}: model_lora must be an adapter of this model"
                )
            target.weight += delta.to(target.weight.dtype)
            merged += 1
    if merged == 0:
        raise ModelFormatError(f"no LoRA weights found in {d}")
    log.info("merged %d LoRA layers from %s (scale %.3g)", merged, d, scale)
    return merged
