"""The fields saying which model a LlamaIndex class runs on, and how it is loaded.

One declaration for :class:`~llamaindex_rkllm.RKLLM`, :class:`~llamaindex_rkllm.RKLLMEmbedding`
and :class:`~llamaindex_rkllm.RKLLMRerank`: given the same fields they load through the one
shared loader (:func:`rkllm_core.load_shared`) and so share one copy of the model.
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.bridge.pydantic import BaseModel, Field
from pydantic import AliasChoices

from rkllm_core import RKLLMModel, RuntimeConfig, load_shared


class ModelLoading(BaseModel):
    """Model file, engine and runtime parameters of a LlamaIndex class."""

    model: str = Field(
        default="smollm2",
        description="Model file or directory (.rkllm, .gguf, HF dir) or a known demo name.",
    )
    backend: Literal["auto", "npu", "pc"] = Field(
        default="auto", description="'npu' for .rkllm files, 'pc' otherwise ('auto' picks)."
    )
    runtime_config: RuntimeConfig | dict[str, Any] | None = Field(
        default=None,
        description="Runtime parameters the model is loaded with (None: the defaults, shared).",
    )
    max_context_len: int | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("max_context_len", "context_window"),
        description="Load with this context window (None: the runtime config's).",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the engine (e.g. tokenizer=<dir>)."
    )

    def _load_core(self) -> RKLLMModel:
        """The shared model these fields name (loaded now if no class holds it yet)."""
        return load_shared(
            self.model, runtime_config=self.runtime_config,
            max_context_len=self.max_context_len, backend=self.backend,
            engine_options=self.engine_options,
        )
