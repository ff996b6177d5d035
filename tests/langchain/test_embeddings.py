"""RKLLMEmbeddings on the demo model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings

from .conftest import DEMO_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("demo_model")]

DOCS = ["The Amber Span is a stone bridge in Orlen.",
        "Glimmerfinches nest in the reeds along the river.",
        "Kelp paper is pressed between cedar boards.",
        "Mount Sorrel is the highest summit of the Hallow Peaks."]


def test_batched_equals_one_by_one_and_is_normalised(demo_model: Any) -> None:
    emb = RKLLMEmbeddings(model=DEMO_MODEL, batch_size=4)
    batched = np.asarray(emb.embed_documents(DOCS))
    single = np.asarray([emb.embed_documents([d])[0] for d in DOCS])
    assert batched.shape == (4, demo_model.embedding_dimension())
    np.testing.assert_allclose(batched, single, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-4)
    assert emb.client is demo_model is ChatRKLLM(model=DEMO_MODEL).client  # one load


def test_options_change_the_vectors() -> None:
    base = RKLLMEmbeddings(model=DEMO_MODEL)
    query = "Where is the Amber Span?"
    plain = np.asarray(base.embed_query(query))
    instructed = np.asarray(
        RKLLMEmbeddings(model=DEMO_MODEL, query_instruction="Find the bridge: ").embed_query(query)
    )
    assert not np.allclose(plain, instructed)
    # the instruction is for queries only
    assert np.allclose(
        base.embed_documents([query])[0],
        RKLLMEmbeddings(model=DEMO_MODEL, query_instruction="Find: ").embed_documents([query])[0],
    )
    raw = np.asarray(RKLLMEmbeddings(model=DEMO_MODEL, normalize=False, pooling="mean",
                                     strategy="plain").embed_query(query))
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3


def test_retrieval_ranks_the_right_document_first() -> None:
    emb = RKLLMEmbeddings(model=DEMO_MODEL)
    docs = np.asarray(emb.embed_documents(DOCS))
    query = np.asarray(emb.embed_query("Which bridge is in Orlen?"))
    assert int(np.argmax(docs @ query)) == 0


async def test_async_variants_match() -> None:
    emb = RKLLMEmbeddings(model=DEMO_MODEL)
    assert np.allclose(await emb.aembed_documents(DOCS[:2]), emb.embed_documents(DOCS[:2]),
                       atol=1e-5)
    assert np.allclose(await emb.aembed_query("bridge"), emb.embed_query("bridge"), atol=1e-5)


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        RKLLMEmbeddings(pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RKLLMEmbeddings(batch_size=0)
