"""Load a model for the PC engine: a Hugging Face directory, a GGUF file, or a toolkit export."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import staging as staging_dir
from ..errors import DownloadError, ModelFormatError, ModelNotFoundError, RKLLMError
from ..formats.export import is_export, load_export
from ..formats.gguf import check_gguf

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A causal LM ready for inference, its tokenizer and what is known about the source."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    source_format: str  # "hf" | "gguf" | "rkllm-export"
    quantization: str | None


_FILE_SUFFIXES = (".gguf", ".rkllm", ".safetensors", ".bin", ".json", ".pt", ".pth")
_HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _is_hub_id(text: str) -> bool:
    """``org/name`` that cannot be a local path the user meant: a relative path that does not
    exist (``models/foo.gguf``, ``./x``, ``a/b/c``) is reported as missing, not downloaded."""
    parts = text.split("/")
    if len(parts) != 2 or not all(_HUB_PART.fullmatch(part) for part in parts):
        return False
    if text.lower().endswith(_FILE_SUFFIXES) or Path(parts[0]).exists():
        return False
    return True


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
    if is_export(path):
        qmodel, tokenizer = _guarded(path, "toolkit export", lambda: load_export(path))
        return LoadedModel(qmodel, tokenizer, "rkllm-export", _export_dtype(qmodel))
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _load_gguf(path, dtype)
    if path.is_dir() and (path / "config.json").exists():
        tokenizer = _guarded(path, "Hugging Face directory",
                             lambda: AutoTokenizer.from_pretrained(path))
        lm = _guarded(path, "Hugging Face directory",
                      lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype))
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
    from ..demo_models import cache_dir

    stat = path.stat()
    return cache_dir() / "converted" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-{dtype}"


def _load_gguf(path: Path, dtype: str) -> LoadedModel:
    """Load a GGUF file, through a cached Hugging Face copy of its dequantized weights.

    Parsing GGUF metadata and mapping tensor names in transformers takes ~20 s even for a
    135M model; loading the same weights saved as safetensors takes ~1 s. The copy is made
    once per file (keyed by size and mtime; disable with RKLLM_GGUF_CACHE=0) and written
    atomically, so an interrupted conversion never leaves a half-written copy behind; a copy
    whose files do not match the sizes recorded with it is rebuilt.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Our bounded reader first: a corrupt or truncated file gets a typed error naming the
    # problem, and never reaches readers that trust its counts.
    source = check_gguf(path)
    torch_dtype = getattr(torch, dtype)
    converted = _converted_dir(path, dtype)
    if converted is not None and (converted / _SOURCE_NOTE).exists():
        try:
            note = _complete_copy_note(converted)
            tokenizer = AutoTokenizer.from_pretrained(converted)
            lm = AutoModelForCausalLM.from_pretrained(converted, dtype=torch_dtype)
            return LoadedModel(lm.eval(), tokenizer, "gguf", note.get("quantization"))
        except Exception as exc:  # a damaged copy (any reader's error): rebuild it
            log.warning("cached conversion %s is unusable (%s); converting again", converted, exc)
            shutil.rmtree(converted, ignore_errors=True)
    log.info("loading GGUF %s (dequantized to %s)", path, dtype)
    tokenizer = _guarded(path, "GGUF", lambda: AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name))
    lm = _guarded(path, "GGUF", lambda: AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch_dtype))
    quant = source.file_type()
    if converted is not None:
        _save_converted(lm, tokenizer, converted, {"source": str(path), "quantization": quant})
    return LoadedModel(lm.eval(), tokenizer, "gguf", quant)


@dataclass
class ModelDescription:
    """What the engine needs of a model besides its weights (for kernels that bring their own)."""

    tokenizer: Any  # transformers PreTrainedTokenizerBase
    config: Any  # transformers PretrainedConfig
    generation_config: Any  # transformers GenerationConfig
    quantization: str | None


def describe_gguf(path: Path) -> ModelDescription:
    """Tokenizer and configuration of a GGUF file, without loading its weights.

    The cached dequantized copy (see :func:`_load_gguf`) holds both and loads in about a
    second; without one, transformers reads them from the file's metadata (slower: the whole
    vocabulary is parsed) and no copy is written, since no weights were loaded.
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    source = check_gguf(path)
    quant = source.file_type()
    converted = _converted_dir(path, "float32")
    if converted is not None and (converted / _SOURCE_NOTE).exists():
        try:
            note = _complete_copy_note(converted)
            return ModelDescription(
                AutoTokenizer.from_pretrained(converted),
                AutoConfig.from_pretrained(converted),
                GenerationConfig.from_pretrained(converted),
                note.get("quantization", quant),
            )
        except Exception as exc:  # a damaged copy: read the file itself (load_pretrained
            # rebuilds the copy the next time the torch kernels load it)
            log.warning("cached conversion %s is unusable (%s); reading the GGUF", converted, exc)
    tokenizer = _guarded(path, "GGUF", lambda: AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name))
    config = _guarded(path, "GGUF", lambda: AutoConfig.from_pretrained(
        path.parent, gguf_file=path.name))
    return ModelDescription(tokenizer, config, GenerationConfig.from_model_config(config), quant)


def _guarded(path: Path, kind: str, load: Callable[[], Any]) -> Any:
    """Run a third-party loader; its format errors become a ModelFormatError naming the file."""
    try:
        return load()
    except (RKLLMError, MemoryError, KeyboardInterrupt):
        raise
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise ModelNotFoundError(f"{path}: {exc}") from exc
        raise ModelFormatError(f"{path} could not be loaded as a {kind}: {exc}") from exc
    except Exception as exc:  # ValueError, struct.error, KeyError … from the parsers
        raise ModelFormatError(
            f"{path} could not be loaded as a {kind} ({type(exc).__name__}: {exc});"
            f" the file is corrupt or of an unsupported architecture"
        ) from exc


def _complete_copy_note(converted: Path) -> dict[str, Any]:
    """The note of a complete converted copy; raises if a file is missing or of another size."""
    note = json.loads((converted / _SOURCE_NOTE).read_text())
    sizes = note.get("sizes")
    if not isinstance(sizes, dict):
        raise ModelFormatError("the copy records no file sizes (written by an older version)")
    for name, size in sizes.items():
        actual = (converted / name).stat().st_size
        if actual != size:
            raise ModelFormatError(f"{name} has {actual} bytes, {size} were written")
    return note


_SOURCE_NOTE = "rkllm-source.json"  # written last: its presence marks a complete copy


def _save_converted(lm: Any, tokenizer: Any, target: Path, note: dict[str, Any]) -> None:
    try:
        with staging_dir(target.parent) as tmp:
            staging = tmp / "model"
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
            sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
            (staging / _SOURCE_NOTE).write_text(json.dumps({**note, "sizes": sizes}))
            os.replace(staging, target)
    except OSError as exc:  # a read-only or full cache only costs speed next time
        # (CacheDirError is an OSError too)
        log.warning("could not cache the converted GGUF at %s: %s", target, exc)


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
