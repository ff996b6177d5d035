"""Retrieval on the model's own outputs: lexical terms, rank fusion, logits reranking.

The framework adapters wrap these as their retrievers, compressors and postprocessors, so a
LangChain app and a LlamaIndex app retrieve the same passages.
"""

from .context import fit_context
from .fusion import RRF_K, reciprocal_rank_fusion
from .hybrid import DEFAULT_FETCH_K, DEFAULT_K, hybrid_search
from .lexical import STOP_WORDS, LexicalIndex, bm25_tokens
from .rerank import Ranked

__all__ = [
    "DEFAULT_FETCH_K",
    "DEFAULT_K",
    "RRF_K",
    "STOP_WORDS",
    "LexicalIndex",
    "Ranked",
    "bm25_tokens",
    "fit_context",
    "hybrid_search",
    "reciprocal_rank_fusion",
]
