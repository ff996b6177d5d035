"""Retrieval through the public API on the demo model, over real licence texts (Debian's
/usr/share/common-licenses, written by their licensors): rerank, hybrid retrievers in both
frameworks, long-text rules."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkllm_core import ContextLengthError, RKLLMModel

pytestmark = [pytest.mark.integration]

LICENSES = Path("/usr/share/common-licenses")
# the opening of each text: enough for several chunks, small enough for a quick index
SOURCES = {"BSD": 1500, "Apache-2.0": 1800, "MPL-2.0": 1800, "CC0-1.0": 1500}


@pytest.fixture(scope="module")
def chunks() -> list[tuple[str, str]]:
    """(source, chunk) pairs, split with LangChain's own splitter."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=500, chunk_overlap=0)
    out = []
    for name, size in SOURCES.items():
        text = (LICENSES / name).read_text(encoding="utf-8")[:size]
        out.extend((name, piece) for piece in splitter.split_text(text))
    return out


@pytest.fixture(scope="module")
def model(demo_model_path: Path) -> Any:
    from rkllm_core import load_shared

    return load_shared(str(demo_model_path))


def _endorse_chunk(chunks: list[tuple[str, str]]) -> int:
    return next(i for i, (name, text) in enumerate(chunks) if name == "BSD" and "endorse" in text)


QUESTION = "May the names of the contributors be used to endorse or promote products?"


def test_rerank_puts_the_answering_passage_first(model: RKLLMModel, chunks: Any) -> None:
    target = _endorse_chunk(chunks)
    others = [i for i, (name, _) in enumerate(chunks) if name != "BSD"][:4]
    candidates = [chunks[i][1] for i in [*others, target]]
    ranked = model.rerank(QUESTION, candidates, top_n=2)
    assert len(ranked) == 2 and ranked[0].index == len(others)
    assert ranked[0].score > ranked[1].score
    # the score is the mean log-probability of the question's tokens, read off the logits
    from rkllm_core.retrieval.rerank import question_logprob, scoring_sequences

    pair = scoring_sequences(QUESTION, [candidates[-1]], model.tokenize,
                             model.config.max_context_len)[0]
    assert ranked[0].score == pytest.approx(
        question_logprob(model.logits(list(pair.ids)), pair), abs=1e-3
    )


def test_both_frameworks_retrieve_the_same_chunks(model: RKLLMModel, chunks: Any) -> None:
    from langchain_core.documents import Document
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    import langchain_rkllm as lc
    import llamaindex_rkllm as li

    docs = [Document(page_content=text, metadata={"source": name}, id=str(i))
            for i, (name, text) in enumerate(chunks)]
    lc_retriever = lc.RKLLMHybridRetriever.from_documents(
        docs, lc.RKLLMEmbeddings(model=model.info.model_path), k=3, fetch_k=8,
        reranker=lc.RKLLMReranker(model=model.info.model_path, batch_size=2),
    )
    nodes = [TextNode(text=text, id_=str(i)) for i, (_, text) in enumerate(chunks)]
    index = VectorStoreIndex(nodes, embed_model=li.RKLLMEmbedding(model=model))
    li_retriever = li.RKLLMHybridRetriever(index, nodes, k=3, fetch_k=8,
                                           reranker=li.RKLLMRerank(model=model, batch_size=2))

    got_lc = lc_retriever.invoke(QUESTION)
    got_li = li_retriever.retrieve(QUESTION)
    target = str(_endorse_chunk(chunks))
    assert got_lc[0].id == target
    assert [d.id for d in got_lc] == [n.node.node_id for n in got_li]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in got_lc],
                               [n.score for n in got_li], atol=1e-4)
    # the reranker alone, as a LangChain compressor, agrees on the best chunk
    best = lc.RKLLMReranker(model=model.info.model_path, top_n=1).compress_documents(
        docs, QUESTION)
    assert best[0].id == target


def test_long_text_is_refused_or_cut_with_a_warning(
    model: RKLLMModel, caplog: pytest.LogCaptureFixture
) -> None:
    long_text = (LICENSES / "BSD").read_text(encoding="utf-8")
    window = 128  # an embedding window smaller than the text (max_tokens)
    assert model.count_tokens(long_text) > window
    with pytest.raises(ContextLengthError, match=r"text 1 .*split long documents"):
        model.embed(["short", long_text], max_tokens=window)
    with caplog.at_level(logging.WARNING, logger="rkllm_core.embeddings"):
        cut = model.embed(["short", long_text], max_tokens=window, truncate=True)
    assert cut.shape[0] == 2 and "cut to the 128-token window" in caplog.text


def test_the_demo_model_embeds_through_its_adapter(model: RKLLMModel, chunks: Any) -> None:
    adapter = model.embedder.adapter_for(model.embedding_config)
    assert adapter is not None and adapter.name == "smollm2"
    texts = [text for _, text in chunks]
    docs = model.embed(texts)
    assert docs.shape == (len(texts), adapter.matrix.shape[1])
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-5)
    bare = model.embed(texts, adapter=False)
    assert bare.shape == (len(texts), model.info.hidden_size)
    # on real licence text, dense retrieval alone finds the answering chunk, and ranks it
    # higher through the adapter than without it
    target = _endorse_chunk(chunks)
    rank = int((np.argsort(-(model.embed(QUESTION, is_query=True) @ docs.T)[0]) == target)
               .nonzero()[0][0])
    bare_rank = int((np.argsort(-(model.embed(QUESTION, is_query=True, adapter=False)
                                  @ bare.T)[0]) == target).nonzero()[0][0])
    assert rank < 3 and rank <= bare_rank
