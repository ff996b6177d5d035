"""LlamaIndex integration for rkllm-py: an LLM, an embedding model, a hybrid retriever and a
logits reranker over RKLLM.

>>> from llama_index.core import Settings
>>> from llamaindex_rkllm import RKLLM, RKLLMEmbedding
>>> Settings.llm = RKLLM(model="smollm2")
>>> Settings.embed_model = RKLLMEmbedding(model="smollm2")  # same model in memory

Both load through ``rkllm_core.shared_model``: one copy per file and runtime config.
"""

from .embeddings import RKLLMEmbedding
from .llms import RKLLM
from .postprocessors import RKLLMRerank
from .retrievers import RKLLMHybridRetriever

__all__ = ["RKLLM", "RKLLMEmbedding", "RKLLMHybridRetriever", "RKLLMRerank"]
