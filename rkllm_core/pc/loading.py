"""Load a model for the PC engine: a Hugging Face directory, a GGUF file, or a toolkit export."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DownloadError, ModelFormatError, ModelNotFoundError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A causal LM ready for inference, its tokenizer and what is known about the source."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    source_format: str  # "hf" | "gguf" | "rkllm-export"
    quantization: str | None


def gguf_file_type(path: Path) -> str | None:
    """The file's quantization (e.g. ``Q4_K_M``): ``general.file_type``, else the tensor type
    holding most weights."""
    try:
        import gguf
    except ImportError:  # pragma: no cover - gguf is part of the [pc] extra
        return None
    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            name = gguf.LlamaFileType(int(field.contents())).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        counts[kind] = counts.get(kind, 0) + int(tensor.n_elements)
    return max(counts, key=counts.__getitem__) if counts else None


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def load_pretrained(model: str | os.PathLike[str], dtype: str = "float32") -> LoadedModel:
    """Load ``model`` (directory, ``.gguf`` file, toolkit export or hub id) for inference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    path = Path(model).expanduser()
    if not path.exists():
        if _is_hub_id(str(model)):
            return _load_from_hub(str(model), torch_dtype)
        raise ModelNotFoundError(
            f"model {str(model)!r} does not exist: pass a .gguf file, a Hugging Face model"
            f" directory, a toolkit export, or a demo name such as 'smollm2'"
            f" (fetch it with `rkllm pull smollm2`)"
        )
    toolkit_export = _toolkit_export()
    if toolkit_export is not None and toolkit_export.is_export(path):
        qmodel, tokenizer = toolkit_export.load_export(path)
        return LoadedModel(qmodel, tokenizer, "rkllm-export", _export_dtype(qmodel))
    if path.is_file() and path.suffix.lower() == ".gguf":
        log.info("loading GGUF %s (dequantized to %s)", path, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        lm = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch_dtype
        )
        return LoadedModel(lm.eval(), tokenizer, "gguf", gguf_file_type(path))
    if path.is_dir() and (path / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        return LoadedModel(lm.eval(), tokenizer, "hf", None)
    if path.suffix.lower() == ".rkllm":
        raise ModelFormatError(
            f"{path} is an NPU model (.rkllm): its weights are packed for the NPU and cannot run"
            f" on the PC engine; use backend='npu' on a board, or load the source model"
            f" (Hugging Face directory or GGUF) on the PC"
        )
    raise ModelFormatError(
        f"{path} is neither a .gguf file, a Hugging Face directory (with config.json) nor a"
        f" toolkit export; convert it or point at the right path"
    )


def _toolkit_export() -> Any:
    try:
        from ..toolkit import export
    except ImportError:  # the toolkit is optional for plain inference
        return None
    return export


def _export_dtype(model: Any) -> str | None:
    manifest = getattr(model, "rkllm_manifest", None)
    if isinstance(manifest, dict):
        return str(manifest.get("quantized_dtype") or manifest.get("dtype") or "")
    return None


def _load_from_hub(model_id: str, torch_dtype: Any) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        lm = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype)
    except OSError as exc:
        raise DownloadError(
            f"{model_id!r} is not a local path and could not be fetched from the Hugging Face"
            f" hub (no network, or no such model): {exc.__class__.__name__}. Download it on a"
            f" machine with internet and pass the directory, or use a demo model:"
            f" `rkllm pull smollm2`"
        ) from exc
    return LoadedModel(lm.eval(), tokenizer, "hf", None)
