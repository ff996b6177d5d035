"""LangChain integration for Rockchip RKLLM: chat model, completion LLM, embeddings, and
retrieval (hybrid retriever, logits reranker).

>>> from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings
>>> llm = ChatRKLLM(model="smollm2", temperature=0)      # loads lazily, shared per process
>>> emb = RKLLMEmbeddings(model="smollm2")               # same file: same loaded model
"""

from .chat_models import ChatRKLLM
from .embeddings import RKLLMEmbeddings
from .llms import RKLLM
from .rerankers import RKLLMReranker
from .retrievers import RKLLMHybridRetriever

__all__ = ["RKLLM", "ChatRKLLM", "RKLLMEmbeddings", "RKLLMHybridRetriever", "RKLLMReranker"]
