"""``RKLLMEmbedding`` on the demo model: shapes, batching, async, options, shared model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import Document

from llamaindex_rkllm import RKLLM, RKLLMEmbedding
from llamaindex_rkllm.embeddings import DEFAULT_EMBED_BATCH_SIZE

pytestmark = pytest.mark.integration

TEXTS = [
    "The glimmerfinch has copper-coloured wings.",
    "Kelp paper is soaked for nine days.",
    "Mount Sorrel is 3,207 metres high and is covered in snow from October to May.",
    "A toll of one copper coin was charged until 1902.",
    "Port Myre",
]


class _EmbedSpy:
    def __init__(self, model: Any) -> None:
        self.calls: list[int] = []
        self._original = model.embed

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        self.calls.append(len(texts))
        return self._original(texts, **kwargs)


def test_is_a_base_embedding(embed_model: RKLLMEmbedding) -> None:
    assert isinstance(embed_model, BaseEmbedding)
    assert embed_model.model_name == embed_model.core_model.info.model_name
    assert embed_model.embed_batch_size == DEFAULT_EMBED_BATCH_SIZE
    assert embed_model.dimension == embed_model.core_model.embedding_dimension()


def test_vectors_have_the_models_dimension_and_unit_length(embed_model: RKLLMEmbedding) -> None:
    vector = embed_model.get_text_embedding(TEXTS[0])
    assert isinstance(vector, list) and all(isinstance(x, float) for x in vector[:5])
    assert len(vector) == embed_model.dimension
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)


def test_batch_equals_one_by_one(embed_model: RKLLMEmbedding) -> None:
    batch = np.array(embed_model.get_text_embedding_batch(TEXTS))
    single = np.array([embed_model.get_text_embedding(t) for t in TEXTS])
    assert batch.shape == (len(TEXTS), embed_model.dimension)
    np.testing.assert_allclose(batch, single, atol=1e-4)
    # different texts give different vectors (not a constant)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3


def test_llamaindex_batches_reach_the_core_whole(
    embed_model: RKLLMEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = RKLLMEmbedding(model=embed_model.core_model, embed_batch_size=2)
    assert small.core_model is embed_model.core_model
    spy = _EmbedSpy(small.core_model)
    monkeypatch.setattr(small.core_model, "embed", spy)
    vectors = small.get_text_embedding_batch(TEXTS)
    assert spy.calls == [2, 2, 1]  # one core call per LlamaIndex batch
    assert len(vectors) == len(TEXTS)


async def test_async_equals_sync(embed_model: RKLLMEmbedding) -> None:
    sync = np.array(embed_model.get_text_embedding_batch(TEXTS[:2]))
    many = np.array(await embed_model.aget_text_embedding_batch(TEXTS[:2]))
    one = np.array(await embed_model.aget_text_embedding(TEXTS[0]))
    query = np.array(await embed_model.aget_query_embedding(TEXTS[4]))
    np.testing.assert_allclose(many, sync, atol=1e-4)
    np.testing.assert_allclose(one, sync[0], atol=1e-4)
    np.testing.assert_allclose(query, embed_model.get_query_embedding(TEXTS[4]), atol=1e-4)


def test_query_instruction_prefixes_queries_only(embed_model: RKLLMEmbedding) -> None:
    core = embed_model.core_model
    instruction = "Represent this question for finding a paragraph: "
    # uncentred: a centred query is measured from the query side's mean, a text from the
    # passage side's, so only without centring is a query the text with its prefix
    instructed = RKLLMEmbedding(model=core, query_instruction=instruction, center=False)
    bare = RKLLMEmbedding(model=core, query_instruction="", center=False)  # "" = no default
    embed_model = RKLLMEmbedding(model=core, center=False)
    query = "How long is kelp soaked?"
    with_instruction = np.array(instructed.get_query_embedding(query))
    np.testing.assert_allclose(
        with_instruction, embed_model.get_text_embedding(instruction + query), atol=1e-4
    )
    without = np.array(bare.get_query_embedding(query))
    np.testing.assert_allclose(without, embed_model.get_text_embedding(query), atol=1e-4)
    assert np.abs(with_instruction - without).max() > 1e-3
    # the model's default instruction applies when the field is left unset
    default = core.embedding_config.query_instruction
    np.testing.assert_allclose(
        embed_model.get_query_embedding(query),
        embed_model.get_text_embedding(default + query),
        atol=1e-4,
    )
    # documents are not prefixed
    np.testing.assert_allclose(
        instructed.get_text_embedding(query), bare.get_text_embedding(query), atol=1e-4
    )


def test_pooling_and_normalize_options(embed_model: RKLLMEmbedding) -> None:
    core = embed_model.core_model
    mean = RKLLMEmbedding(model=core, strategy="plain", pooling="mean", normalize=False,
                          center=False)
    last = RKLLMEmbedding(model=core, strategy="plain", pooling="last", normalize=False,
                          center=False)
    assert mean.embedding_config.pooling == "mean" and not mean.embedding_config.normalize
    v_mean = np.array(mean.get_text_embedding(TEXTS[2]))
    v_last = np.array(last.get_text_embedding(TEXTS[2]))
    hidden = core.hidden_states(TEXTS[2])  # the same hidden states, pooled by hand
    np.testing.assert_allclose(v_mean, hidden.mean(axis=0), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(v_last, hidden[-1], rtol=1e-3, atol=1e-3)
    assert abs(np.linalg.norm(v_mean) - 1.0) > 1e-2  # not normalised


def test_prompteol_with_mean_pooling_is_refused(embed_model: RKLLMEmbedding) -> None:
    with pytest.raises(ValueError, match="prompteol"):
        RKLLMEmbedding(model=embed_model.core_model, strategy="prompteol", pooling="mean")


def test_one_model_in_memory(embed_model: RKLLMEmbedding, llm: RKLLM) -> None:
    assert embed_model.core_model is llm.core_model
    from rkllm_core import shared_model

    # what the LangChain classes call with their defaults
    assert shared_model(embed_model.model) is llm.core_model


def test_settings_use_our_classes(
    llm: RKLLM, embed_model: RKLLMEmbedding, monkeypatch: pytest.MonkeyPatch, restore_settings: None
) -> None:
    Settings.llm = llm
    Settings.embed_model = embed_model
    assert Settings.llm is llm
    assert Settings.embed_model is embed_model
    spy = _EmbedSpy(embed_model.core_model)
    monkeypatch.setattr(embed_model.core_model, "embed", spy)
    index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS[:2]])
    assert sum(spy.calls) == 2  # the index embedded through Settings.embed_model
    retriever = index.as_retriever(similarity_top_k=1)
    assert retriever.retrieve("copper-coloured wings")[0].score is not None


def test_centring_measures_queries_and_passages_from_their_own_means(
    embed_model: RKLLMEmbedding,
) -> None:
    core = embed_model.core_model
    assert embed_model.embedding_config.center  # the default for a generative model
    text = "How long is kelp soaked?"
    raw = RKLLMEmbedding(model=core, center=False, normalize=False)
    centred = RKLLMEmbedding(model=core, normalize=False, adapter=False)
    passage_shift = np.array(raw.get_text_embedding(text)) - centred.get_text_embedding(text)
    query_shift = np.array(raw.get_query_embedding(text)) - centred.get_query_embedding(text)
    # each side subtracts a constant vector of its own, whatever the text
    other = "Glimmerfinches nest in reeds."
    np.testing.assert_allclose(
        passage_shift,
        np.array(raw.get_text_embedding(other)) - centred.get_text_embedding(other),
        atol=1e-3,
    )
    assert np.abs(passage_shift - query_shift).max() > 1e-2
