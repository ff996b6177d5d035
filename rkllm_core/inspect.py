"""Describe a model file without loading its weights (``rkllm info``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelFormatError, ModelNotFoundError


def _gguf_facts(path: Path) -> dict[str, Any]:
    try:
        import gguf
    except ImportError as exc:
        raise ModelFormatError(
            "reading GGUF metadata needs the gguf package: pip install 'rkllm-py[pc]'"
        ) from exc
    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        if field is None:
            return None
        try:
            return field.contents()
        except Exception:  # older gguf versions: decode by hand
            return None

    arch = value("general.architecture")
    from .pc.loading import gguf_file_type

    template = value("tokenizer.chat_template")
    return {
        "format": "GGUF",
        "name": value("general.name"),
        "architecture": arch,
        "context_length": value(f"{arch}.context_length"),
        "hidden_size": value(f"{arch}.embedding_length"),
        "layers": value(f"{arch}.block_count"),
        "attention_heads": value(f"{arch}.attention.head_count"),
        "kv_heads": value(f"{arch}.attention.head_count_kv"),
        "vocab_size": len(value("tokenizer.ggml.tokens") or []) or None,
        "tokenizer": value("tokenizer.ggml.model"),
        "quantization": gguf_file_type(path),
        "tensors": len(reader.tensors),
        "chat_template": _summary(template),
    }


def _summary(template: str | None) -> str | None:
    if not template:
        return None
    kind = "ChatML" if "<|im_start|>" in template else "Jinja"
    tools = ", supports tools" if "tools" in template else ""
    return f"{kind} template ({len(template)} chars{tools})"


def _hf_facts(path: Path) -> dict[str, Any]:
    config = json.loads((path / "config.json").read_text())
    tok_cfg_path = path / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.exists() else {}
    template = tok_cfg.get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    quant = config.get("quantization_config", {}).get("quant_method")
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
    from .npu.metadata import read_metadata

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
    from .toolkit.export import read_manifest

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
        from .models import KNOWN_MODELS, fetch_model

        if str(model).lower() in KNOWN_MODELS:
            path = fetch_model(str(model).lower())
        else:
            raise ModelNotFoundError(f"{model} does not exist")
    facts: dict[str, Any]
    from .toolkit.export import is_export  # reads only a manifest; no torch import

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
