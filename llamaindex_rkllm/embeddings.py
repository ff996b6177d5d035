"""``RKLLMEmbedding``: LlamaIndex embeddings from an RKLLM model's last hidden layer."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from rkllm_core import (
    EmbeddingConfig,
    EmbeddingFields,
    RKLLMModel,
    embedding_overrides,
)

from ._loading import ModelLoading

# LlamaIndex hands _get_text_embeddings this many texts at a time. Larger than the core's
# forward batch on purpose: the core sorts each call's texts by length before cutting its own
# batches, so more texts per call means less padding; 32 still keeps the progress bar moving.
DEFAULT_EMBED_BATCH_SIZE = 32

# the progress callback of the get_text_embedding_batch call running in this context
_PROGRESS: ContextVar[Callable[[int], object] | None] = ContextVar("_PROGRESS", default=None)


class RKLLMEmbedding(ModelLoading, EmbeddingFields, BaseEmbedding):  # type: ignore[misc,valid-type]
    """Query and document embeddings from the model's last hidden layer.

    >>> from llamaindex_rkllm import RKLLMEmbedding
    >>> embed = RKLLMEmbedding(model="smollm2", query_instruction="Represent the question: ")
    >>> vector = embed.get_query_embedding("Where does the Lumen River start?")

    Fields left at ``None`` take the model's default :class:`~rkllm_core.EmbeddingConfig`
    (PromptEOL for chat models, last-token pooling for dedicated embedding models).
    ``pooling`` applies to the ``plain`` and ``echo`` strategies; PromptEOL is defined by its
    last token. The model is shared with :class:`RKLLM` and the LangChain classes when they
    point at the same file and runtime config.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, le=2048)

    _model: RKLLMModel = PrivateAttr()
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, model: str | RKLLMModel = "smollm2", **kwargs: Any) -> None:
        loaded = model if isinstance(model, RKLLMModel) else None
        name = loaded.info.model_path if loaded is not None else str(model)
        super().__init__(model=name, **kwargs)
        self._model = loaded or self._load_core()
        self.model_name = self._model.info.model_name  # short: never a path
        self._overrides = embedding_overrides(self)
        _ = self.embedding_config  # validates the combination once, here

    @classmethod
    def class_name(cls) -> str:
        return "RKLLMEmbedding"

    @property
    def core_model(self) -> RKLLMModel:
        """The loaded :class:`rkllm_core.RKLLMModel` (shared with other classes)."""
        return self._model

    @property
    def embedding_config(self) -> EmbeddingConfig:
        """The effective configuration: the model's defaults with this instance's fields."""
        return self._model.embedding_config.with_overrides(self._overrides)

    @property
    def dimension(self) -> int | None:
        """Length of the vectors (the hidden size, or the embedding adapter's), when known."""
        return self._model.embedding_dimension(self.embedding_config)

    # --- sync -------------------------------------------------------------------------------

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._model.embed([query], is_query=True, **self._overrides)[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._model.embed([text], **self._overrides)[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        # one core call per LlamaIndex batch: the core batches the forward passes itself
        return self._model.embed(list(texts), progress=_PROGRESS.get(), **self._overrides).tolist()

    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Embed ``texts``; with ``show_progress`` the bar moves as the model finishes each
        forward batch, not per ``embed_batch_size`` texts."""
        if not show_progress:
            return super().get_text_embedding_batch(texts, **kwargs)
        from tqdm.auto import tqdm

        with tqdm(total=len(texts), desc="Generating embeddings", unit="chunk") as bar:
            token = _PROGRESS.set(bar.update)
            try:
                return super().get_text_embedding_batch(texts, **kwargs)
            finally:
                _PROGRESS.reset(token)

    # --- async: the core runs the work off the event loop ------------------------------------

    async def _aget_query_embedding(self, query: str) -> Embedding:
        vectors = await self._model.aembed([query], is_query=True, **self._overrides)
        return vectors[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._model.aembed([text], **self._overrides))[0].tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return (await self._model.aembed(list(texts), **self._overrides)).tolist()
