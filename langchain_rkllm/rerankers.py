"""RKLLMReranker: a LangChain document compressor that reranks by the model's logits."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from rkllm_core.retrieval import Ranked

from ._common import ModelFields


class RKLLMReranker(ModelFields, BaseDocumentCompressor):
    """Reorders documents by how likely the model finds the query given each one.

    The score (``metadata["relevance_score"]``) is the mean log-probability of the query's
    tokens after the document (:meth:`rkllm_core.RKLLMModel.rerank`); it needs only the
    runtime's logits mode, so it runs on the NPU. Cost: one forward pass over each document
    plus the query.

    Example:
        .. code-block:: python

            from langchain_rkllm import RKLLMReranker

            reranker = RKLLMReranker(model="smollm2", top_n=3)
            best = reranker.compress_documents(docs, "How do I install it?")
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(),
                              arbitrary_types_allowed=True)

    top_n: int | None = Field(default=3, ge=1)
    """Documents kept (None: all, reordered)."""
    batch_size: int = Field(default=4, ge=1)
    """Documents scored per forward pass."""

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The ``top_n`` most relevant documents, best first, with their scores."""
        ranked = self.rerank(query, [d.page_content for d in documents], top_n=self.top_n)
        out = []
        for r in ranked:
            doc = documents[r.index]
            out.append(Document(page_content=doc.page_content, id=doc.id,
                                metadata={**doc.metadata, "relevance_score": r.score}))
        return out

    def rerank(
        self, query: str, passages: Sequence[str], *, top_n: int | None = None
    ) -> list[Ranked]:
        """Core ranking of plain texts (what the hybrid retriever calls)."""
        return self.client.rerank(query, passages, top_n=top_n, batch_size=self.batch_size)
