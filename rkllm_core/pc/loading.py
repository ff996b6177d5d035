"""Load a model for the PC engine: a Hugging Face directory, a GGUF file, or a toolkit export."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
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
        return _load_gguf(path, dtype)
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


def _converted_dir(path: Path, dtype: str) -> Path | None:
    """Where the dequantized copy of a GGUF file is cached (None: caching disabled)."""
    if os.environ.get("RKLLM_GGUF_CACHE", "1") == "0":
        return None
    from ..models import cache_dir

    stat = path.stat()
    return cache_dir() / "converted" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-{dtype}"


def _load_gguf(path: Path, dtype: str) -> LoadedModel:
    """Load a GGUF file, through a cached Hugging Face copy of its dequantized weights.

    Parsing GGUF metadata and mapping tensor names in transformers takes ~20 s even for a
    135M model; loading the same weights saved as safetensors takes ~1 s. The copy is made
    once per file (keyed by size and mtime; disable with RKLLM_GGUF_CACHE=0) and written
    atomically, so an interrupted conversion never leaves a half-written copy behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    converted = _converted_dir(path, dtype)
    if converted is not None and (converted / _SOURCE_NOTE).exists():
        try:
            note = json.loads((converted / _SOURCE_NOTE).read_text())
            tokenizer = AutoTokenizer.from_pretrained(converted)
            lm = AutoModelForCausalLM.from_pretrained(converted, dtype=torch_dtype)
            return LoadedModel(lm.eval(), tokenizer, "gguf", note.get("quantization"))
        except (OSError, ValueError) as exc:  # a damaged copy: rebuild it from the GGUF
            log.warning("cached conversion %s is unusable (%s); converting again", converted, exc)
            shutil.rmtree(converted, ignore_errors=True)
    log.info("loading GGUF %s (dequantized to %s)", path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
    quant = gguf_file_type(path)
    if converted is not None:
        _save_converted(lm, tokenizer, converted, {"source": str(path), "quantization": quant})
    return LoadedModel(lm.eval(), tokenizer, "gguf", quant)


_SOURCE_NOTE = "rkllm-source.json"  # written last: its presence marks a complete copy


def _save_converted(lm: Any, tokenizer: Any, target: Path, note: dict[str, Any]) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            staging = Path(tmp) / "model"
            staging.mkdir()
            # save_pretrained refuses GGUF-loaded models (their config names the GGUF
            # quantizer) although the weights are already dequantized: save them directly
            from safetensors.torch import save_model

            config = copy.deepcopy(lm.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(staging)
            lm.generation_config.save_pretrained(staging)
            save_model(lm, str(staging / "model.safetensors"), metadata={"format": "pt"})
            tokenizer.save_pretrained(staging)
            (staging / _SOURCE_NOTE).write_text(json.dumps(note))
            os.replace(staging, target)
    except OSError as exc:  # a read-only or full cache only costs speed next time
        log.warning("could not cache the converted GGUF at %s: %s", target, exc)


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
