"""RKLLMHybridRetriever: BM25 and dense retrieval fused (optionally reranked by the model)."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.indices import VectorStoreIndex
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from rkllm_core.retrieval import DEFAULT_FETCH_K, DEFAULT_K, LexicalIndex, hybrid_search

from .postprocessors import RKLLMRerank


class RKLLMHybridRetriever(BaseRetriever):
    """The default RAG retrieval of rkllm-py for LlamaIndex.

    BM25 over the nodes and the index's vector retriever each propose ``fetch_k``
    candidates and reciprocal rank fusion merges them; a reranker (optional) reorders them by
    the model's logits, fused again with the first stage: the same core function as
    LangChain's :class:`langchain_rkllm.RKLLMHybridRetriever`.

    >>> index = VectorStoreIndex(nodes, embed_model=RKLLMEmbedding(model="smollm2"))
    >>> retriever = RKLLMHybridRetriever(index, nodes, reranker=RKLLMRerank(model="smollm2"))
    """

    def __init__(
        self,
        index: VectorStoreIndex,
        nodes: Sequence[BaseNode],
        *,
        k: int = DEFAULT_K,
        fetch_k: int = DEFAULT_FETCH_K,
        reranker: RKLLMRerank | None = None,
    ) -> None:
        if fetch_k < k or k < 1:
            raise ValueError(f"need 1 <= k <= fetch_k, got k={k}, fetch_k={fetch_k}")
        super().__init__()
        self._nodes = list(nodes)
        self._texts = [n.get_content(metadata_mode=MetadataMode.NONE) for n in self._nodes]
        self._position = {n.node_id: i for i, n in enumerate(self._nodes)}
        self._lexical = LexicalIndex(self._texts)
        self._vector = index.as_retriever(similarity_top_k=fetch_k)
        self._k, self._fetch_k, self._reranker = k, fetch_k, reranker

    def _dense(self, query: str, n: int) -> list[int]:
        found = self._vector.retrieve(query)[:n]
        return [self._position[h.node.node_id] for h in found if h.node.node_id in self._position]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        ranked = hybrid_search(
            query_bundle.query_str, self._texts, self._lexical, self._dense,
            k=self._k, fetch_k=self._fetch_k, reranker=self._reranker,
        )
        return [NodeWithScore(node=self._nodes[r.index], score=r.score) for r in ranked]
