"""RKLLMEmbeddings: LangChain embeddings from a model's last hidden layer."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from rkllm_core import EmbeddingConfig, RKLLMModel, RuntimeConfig, load_shared, runtime_config_with


class RKLLMEmbeddings(BaseModel, Embeddings):
    """Sentence embeddings from the last hidden layer of an RKLLM / PC-engine model.

    The model is loaded lazily and shared with any :class:`ChatRKLLM` on the same file, so a
    RAG app keeps one copy in memory. Texts are embedded in batches (``batch_size`` per
    forward pass).

    Example:
        .. code-block:: python

            from langchain_rkllm import RKLLMEmbeddings

            emb = RKLLMEmbeddings(model="smollm2")
            vectors = emb.embed_documents(["Rivers flow to the sea.", "Bridges cross them."])
            query = emb.embed_query("Where do rivers go?")

    Unset options (``strategy``, ``pooling`` …) keep the core's default for the model family.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "smollm2"
    """Model file or known demo model name (see ChatRKLLM.model)."""
    backend: Literal["auto", "npu", "pc"] = "auto"
    max_context_len: int | None = Field(default=None, gt=0)
    runtime_config: dict[str, Any] = Field(default_factory=dict)
    """Other RuntimeConfig fields passed through."""
    engine_options: dict[str, Any] = Field(default_factory=dict)

    strategy: Literal["plain", "prompteol", "echo"] | None = None
    """How a text becomes one vector: its own states, a one-word summary prompt, or echo."""
    pooling: Literal["last", "mean", "first"] | None = None
    normalize: bool | None = None
    """L2-normalise vectors (cosine similarity = dot product)."""
    query_instruction: str | None = None
    """Prefix for ``embed_query`` texts only (e.g. 'Represent this question for retrieval: ')."""
    batch_size: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, gt=0)
    """Truncate texts to this many tokens."""
    show_progress: bool = False
    """Show a tqdm bar over batches in ``embed_documents``."""

    _loaded: RKLLMModel | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _validate_now(self) -> RKLLMEmbeddings:
        self._runtime_config()
        EmbeddingConfig(**self._overrides())
        return self

    def _runtime_config(self) -> RuntimeConfig:
        return runtime_config_with(self.runtime_config, self.max_context_len)

    def _overrides(self) -> dict[str, Any]:
        names = ("strategy", "pooling", "normalize", "query_instruction", "batch_size",
                 "max_tokens")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def core_model(self) -> RKLLMModel:
        """The underlying shared :class:`rkllm_core.RKLLMModel` (loaded on first access)."""
        if self._loaded is None or self._loaded.closed:
            self._loaded = load_shared(self.model, runtime_config=self._runtime_config(),
                                       backend=self.backend, engine_options=self.engine_options)
        return self._loaded

    @property
    def client(self) -> RKLLMModel:
        """Another name of :attr:`core_model` (LangChain integrations call it ``client``)."""
        return self.core_model

    def _batch_size(self, model: RKLLMModel) -> int:
        return self.batch_size or model.embedding_config.batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents in batches; one vector per text, in order."""
        model = self.client
        if not self.show_progress:
            return model.embed(texts, **self._overrides()).tolist()
        from tqdm.auto import tqdm

        size = self._batch_size(model)
        out: list[list[float]] = []
        with tqdm(total=len(texts), desc="Embedding", unit="doc") as bar:
            for start in range(0, len(texts), size):
                part = texts[start : start + size]
                out.extend(model.embed(part, **self._overrides()).tolist())
                bar.update(len(part))
        return out

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with ``query_instruction`` in front, when set)."""
        return self.client.embed([text], is_query=True, **self._overrides())[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`; runs off the event loop."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`; runs off the event loop."""
        return await asyncio.to_thread(self.embed_query, text)
