"""One loaded model per file and configuration for the whole process, and the one loader the
framework classes use (LangChain's ChatRKLLM, RKLLM, RKLLMEmbeddings; LlamaIndex's RKLLM,
RKLLMEmbedding), so a chat model and an embedding model on the same file share one copy."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from .config import RuntimeConfig
from .errors import ConfigError
from .model import Backend, RKLLMModel, _choose_backend, _resolve_model

_SHARED: dict[tuple, RKLLMModel] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(
    model: str | os.PathLike[str],
    config: RuntimeConfig | None = None,
    *,
    backend: Backend = "auto",
    **engine_options: Any,
) -> RKLLMModel:
    """One loaded model per (file, backend, config, engine options) for the whole process.

    On the PC engine the options count with the kernels they resolve to: ``RKLLM_PC_KERNELS``
    included, so a model loaded on one set of kernels is never handed to a caller who gets
    the other (and ``kernels="torch"`` shares the copy loaded without the option).
    """
    cfg = config or RuntimeConfig()
    path = _resolve_model(model)
    options = dict(engine_options)
    if _choose_backend(path, backend) == "pc":
        from .pc.kernels import choose_kernels  # torch-free: no torch import on the board

        options["kernels"] = choose_kernels(options.get("kernels"), path)
    key = (
        str(path.resolve()) if path.exists() else str(model),
        backend,
        cfg.model_dump_json(),
        tuple(sorted((k, repr(v)) for k, v in options.items())),
    )
    with _SHARED_LOCK:
        existing = _SHARED.get(key)
        if existing is not None and not existing.closed:
            return existing
        loaded = RKLLMModel(path, cfg, backend=backend, **engine_options)
        _SHARED[key] = loaded
        return loaded


def runtime_config_with(
    runtime_config: RuntimeConfig | Mapping[str, Any] | None, max_context_len: int | None
) -> RuntimeConfig:
    """A framework class's runtime settings as one validated :class:`RuntimeConfig`."""
    if isinstance(runtime_config, RuntimeConfig):
        if max_context_len is None or max_context_len == runtime_config.max_context_len:
            return runtime_config
        values = runtime_config.model_dump()
    else:
        values = dict(runtime_config or {})
    if max_context_len is not None:
        values["max_context_len"] = max_context_len
    try:
        return RuntimeConfig(**values)  # rebuilt rather than copied so values are validated
    except ValueError as exc:
        raise ConfigError(f"invalid runtime_config {values!r}: {exc}") from exc


def load_shared(
    model: str | os.PathLike[str] | RKLLMModel,
    *,
    runtime_config: RuntimeConfig | Mapping[str, Any] | None = None,
    max_context_len: int | None = None,
    backend: Backend = "auto",
    engine_options: Mapping[str, Any] | None = None,
) -> RKLLMModel:
    """The model a framework class runs on: an :class:`RKLLMModel` passed in as is, else the
    process-wide shared copy for these settings (loaded now if nobody has loaded it yet)."""
    if isinstance(model, RKLLMModel):
        return model
    config = runtime_config_with(runtime_config, max_context_len)
    return shared_model(model, config, backend=backend, **dict(engine_options or {}))


__all__ = ["load_shared", "runtime_config_with", "shared_model"]


def short_model_name(model: str | os.PathLike[str]) -> str:
    """A short, path-free name of a model: the demo name as given, else the file's stem
    (``/models/qwen3-0.6b.rkllm`` -> ``qwen3-0.6b``), for cache namespaces and logs."""
    text = os.fspath(model).rstrip("/\\")
    base = os.path.basename(text) or text
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in (".rkllm", ".gguf", ".rkllm-pc") else base
