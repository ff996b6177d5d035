"""RKLLMRerank: a LlamaIndex node postprocessor that reranks by the model's logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rkllm_core import RKLLMModel
from rkllm_core.retrieval import Ranked

from ._loading import ModelLoading


class RKLLMRerank(ModelLoading, BaseNodePostprocessor):
    """Reorders nodes by how likely the model finds the query given each one.

    The node's new score is the mean log-probability of the query's tokens after its text
    (:meth:`rkllm_core.RKLLMModel.rerank`): the logits mode only, so it runs on the NPU.
    Cost: one forward pass over each node plus the query.

    >>> rerank = RKLLMRerank(model="smollm2", top_n=3)
    >>> engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[rerank])
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    top_n: int | None = Field(default=3, ge=1, description="Nodes kept (None: all).")
    batch_size: int = Field(default=4, ge=1, description="Nodes scored per forward pass.")

    _model: RKLLMModel = PrivateAttr()

    def __init__(self, model: str | RKLLMModel = "smollm2", **kwargs: Any) -> None:
        loaded = model if isinstance(model, RKLLMModel) else None
        super().__init__(model=loaded.info.model_path if loaded else str(model), **kwargs)
        self._model = loaded or self._load_core()

    @classmethod
    def class_name(cls) -> str:
        return "RKLLMRerank"

    @property
    def core_model(self) -> RKLLMModel:
        """The loaded :class:`rkllm_core.RKLLMModel` (shared with other classes)."""
        return self._model

    def rerank(
        self, query: str, passages: Sequence[str], *, top_n: int | None = None
    ) -> list[Ranked]:
        """Core ranking of plain texts (what the hybrid retriever calls)."""
        return self._model.rerank(query, passages, top_n=top_n, batch_size=self.batch_size)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RKLLMRerank needs the query: pass query_bundle / query_str")
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        ranked = self.rerank(query_bundle.query_str, texts, top_n=self.top_n)
        return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in ranked]
