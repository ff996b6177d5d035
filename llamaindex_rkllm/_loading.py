"""How the LlamaIndex classes get their model: through ``rkllm_core.shared_model``.

Going through the core's per-process cache is what lets ``RKLLM``, ``RKLLMEmbedding`` and the
LangChain classes that point at the same file share one loaded model.
"""

from __future__ import annotations

from typing import Any

from rkllm_core import RKLLMModel, RuntimeConfig, shared_model


def runtime_config_for(
    runtime_config: RuntimeConfig | None, context_window: int | None
) -> RuntimeConfig | None:
    """The RuntimeConfig to load with; ``None`` keeps the default (and the shared model)."""
    if context_window is None:
        return runtime_config
    if runtime_config is None:
        return RuntimeConfig(max_context_len=context_window)
    if runtime_config.max_context_len != context_window:
        # rebuilt rather than copied so the new value is validated
        return RuntimeConfig(**{**runtime_config.model_dump(), "max_context_len": context_window})
    return runtime_config


def load_model(
    model: str,
    runtime_config: RuntimeConfig | None,
    context_window: int | None,
    backend: str,
    engine_options: dict[str, Any],
) -> RKLLMModel:
    """The shared loaded model for these settings (loaded on first use)."""
    return shared_model(
        model,
        runtime_config_for(runtime_config, context_window),
        backend=backend,  # type: ignore[arg-type]
        **engine_options,
    )
