"""Describe a model file without loading its weights (``rkllm info``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelFormatError, ModelNotFoundError


def _gguf_facts(path: Path) -> dict[str, Any]:
    from .formats.gguf import read_gguf

    f = read_gguf(path)
    f.check_complete()
    tokens = f.strings("tokenizer.ggml.tokens")
    return {
        "format": "GGUF",
        "name": f.string("general.name"),
        "architecture": f.architecture,
        "context_length": f.arch_integer("context_length"),
        "hidden_size": f.arch_integer("embedding_length"),
        "layers": f.arch_integer("block_count"),
        "attention_heads": f.arch_integer("attention.head_count"),
        "kv_heads": f.arch_integer("attention.head_count_kv"),
        "vocab_size": len(tokens) if tokens else None,
        "tokenizer": f.string("tokenizer.ggml.model"),
        "quantization": f.file_type(),
        "tensors": len(f.tensors),
        "chat_template": _summary(f.string("tokenizer.chat_template")),
    }


def _summary(template: str | None) -> str | None:
    if not template:
        return None
    kind = "ChatML" if "<|im_start|>" in template else "Jinja"
    tools = ", supports tools" if "tools" in template else ""
    return f"{kind} template ({len(template)} chars{tools})"


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _hf_facts(path: Path) -> dict[str, Any]:
    config = _json_object(path / "config.json")
    tok_cfg_path = path / "tokenizer_config.json"
    tok_cfg = _json_object(tok_cfg_path) if tok_cfg_path.exists() else {}
    template = tok_cfg.get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text(errors="replace")
    qcfg = config.get("quantization_config")
    quant = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    return {
        "format": "Hugging Face directory",
        "architecture": config.get("model_type"),
        "context_length": config.get("max_position_embeddings"),
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "attention_heads": config.get("num_attention_heads"),
        "kv_heads": config.get("num_key_value_heads"),
        "vocab_size": config.get("vocab_size"),
        "tokenizer": tok_cfg.get("tokenizer_class"),
        "quantization": quant or config.get("torch_dtype") or config.get("dtype"),
        "chat_template": _summary(template if isinstance(template, str) else None),
    }


def _rkllm_facts(path: Path) -> dict[str, Any]:
    from .formats.rkllm import read_metadata

    meta = read_metadata(path)
    return {
        "format": "RKLLM (NPU)",
        "architecture": meta.architecture,
        "toolkit_version": meta.toolkit_version,
        "platform": meta.platform,
        "max_context": meta.max_context,
        "context_length": meta.context_length,
        "hidden_size": meta.hidden_size,
        "layers": meta.num_layers,
        "vocab_size": meta.vocab_size,
        "tokenizer": meta.tokenizer_model,
        "chat_template": _summary(meta.chat_template),
        "missing_metadata": ", ".join(meta.missing()) or None,
    }


def _export_facts(path: Path) -> dict[str, Any]:
    from .formats.export import read_manifest

    manifest = read_manifest(path)
    hf = _hf_facts(path) if (path / "config.json").exists() else {}
    keys = ("quantized_dtype", "group_size", "quantized_algorithm", "activation_mode",
            "optimization_level", "target_platform", "max_context")
    return {
        **hf,
        "format": "rkllm-py toolkit export (PC simulation, not an NPU .rkllm)",
        **{key: manifest.get(key) for key in keys if key in manifest},
    }


def describe_model(model: str | Path) -> dict[str, Any]:
    """Facts about a model (architecture, context, hidden size, tokenizer, quantization…)."""
    path = Path(model).expanduser()
    if not path.exists():
        from .demo_models import KNOWN_MODELS, fetch_model

        if str(model).lower() in KNOWN_MODELS:
            path = fetch_model(str(model).lower())
        else:
            raise ModelNotFoundError(f"{model} does not exist")
    facts: dict[str, Any]
    from .formats.export import is_export  # reads only a manifest; no torch import

    if path.is_file() and path.suffix.lower() == ".rkllm":
        facts = _rkllm_facts(path)
    elif path.is_file() and path.suffix.lower() == ".gguf":
        facts = _gguf_facts(path)
    elif is_export(path):  # before the HF check: an export also holds a config.json
        facts = _export_facts(path)
    elif path.is_dir() and (path / "config.json").exists():
        facts = _hf_facts(path)
    else:
        raise ModelFormatError(
            f"{path} is not a .rkllm, .gguf, Hugging Face directory or toolkit export"
        )
    size = path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file()
    )
    return {"path": str(path), "size_mb": round(size / 2**20, 1), **facts}
