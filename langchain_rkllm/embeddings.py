"""RKLLMEmbeddings: LangChain embeddings from a model's last hidden layer."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, model_validator

from rkllm_core import EmbeddingConfig, EmbeddingFields, embedding_overrides

from ._common import ModelFields


class RKLLMEmbeddings(ModelFields, EmbeddingFields, Embeddings):  # type: ignore[misc,valid-type]
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

    show_progress: bool = False
    """Show a tqdm bar in ``embed_documents``, moving per document."""

    @model_validator(mode="after")
    def _check_options(self) -> RKLLMEmbeddings:
        EmbeddingConfig(**self._overrides())  # a bad combination fails here, not at first use
        return self

    def _overrides(self) -> dict[str, Any]:
        return embedding_overrides(self)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents; one vector per text, in order."""
        model = self.client
        overrides = self._overrides()
        if not self.show_progress:
            return model.embed(texts, **overrides).tolist()
        from tqdm.auto import tqdm

        with tqdm(total=len(texts), desc="Embedding", unit="doc") as bar:
            vectors = model.embed(texts, progress=bar.update, **overrides)
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with ``query_instruction`` in front, when set)."""
        return self.client.embed([text], is_query=True, **self._overrides())[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`; runs off the event loop."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`; runs off the event loop."""
        return await asyncio.to_thread(self.embed_query, text)
