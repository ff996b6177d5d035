"""Core retrieval pieces without a model: fusion, BM25 terms, the hybrid search's plumbing,
embedding sequences and names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import ConfigError, EmbeddingConfig, short_model_name
from rkllm_core.embeddings import build_sequence, declared_pooling
from rkllm_core.retrieval import (
    LexicalIndex,
    Ranked,
    bm25_tokens,
    hybrid_search,
    reciprocal_rank_fusion,
)
from rkllm_core.retrieval.hybrid import FUSION_K
from rkllm_core.retrieval.rerank import ScoredPair, question_logprob, scoring_sequences


def test_rrf_rewards_agreement_and_keeps_keys_of_either_list() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], k=60)
    keys = [key for key, _ in fused]
    assert keys[0] == "b"  # second in one list, first in the other beats first in one
    assert set(keys) == {"a", "b", "c", "d"}
    assert dict(fused)["b"] == pytest.approx(1 / 62 + 1 / 61)
    weighted = reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, 2.0])
    assert weighted[0][0] == "b"
    with pytest.raises(ConfigError, match="weights"):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 1.0])


def test_bm25_terms_drop_stop_words_and_stem() -> None:
    assert bm25_tokens("How do I install the packages?") == ["instal", "packag"]
    assert bm25_tokens("Installing a package") == ["instal", "packag"]


def test_lexical_index_finds_by_shared_terms_only() -> None:
    index = LexicalIndex(["Rivers flow to the sea.", "Packages are installed with apt.",
                          "The cat sleeps."])
    assert index.top("How are packages installed?", 3) == [1]
    assert LexicalIndex([]).top("anything", 3) == []


class _Prefers:
    """A reranker that puts passages with ``word`` first (to see that hybrid_search applies it)."""

    def __init__(self, word: str) -> None:
        self.word = word

    def rerank(
        self, query: str, passages: Sequence[str], *, top_n: int | None = None
    ) -> list[Ranked]:
        order = sorted(range(len(passages)), key=lambda i: self.word not in passages[i])
        return [Ranked(i, -rank) for rank, i in enumerate(order[:top_n])]


def test_hybrid_search_fuses_then_reranks_by_original_index() -> None:
    texts = ["apt installs packages", "pip installs python packages quickly", "cats sleep",
             "dogs bark"]
    lexical = LexicalIndex(texts)
    dense = lambda query, n: [3, 2, 1, 0][:n]  # noqa: E731 - a fixed dense ranking
    fused = hybrid_search("install packages", texts, lexical, dense, k=2, fetch_k=4)
    assert fused[0].index in (0, 1)  # both lists have it high
    first = [r.index for r in hybrid_search("install packages", texts, lexical, dense, k=4,
                                            fetch_k=4)]
    reranked = hybrid_search("install packages", texts, lexical, dense, k=3, fetch_k=4,
                             reranker=_Prefers("cats"))
    preferred = sorted(first, key=lambda i: "cats" not in texts[i])  # as indices into texts
    want = reciprocal_rank_fusion([first, preferred], k=FUSION_K)
    assert [(r.index, r.score) for r in reranked] == want[:3]
    assert [r.index for r in reranked] != first[:3]  # the reranker changed the order
    with pytest.raises(ConfigError, match="fetch_k"):
        hybrid_search("q", texts, lexical, dense, k=5, fetch_k=4)
    with pytest.raises(ConfigError, match="same texts"):
        hybrid_search("q", texts[:2], lexical, dense)


def test_question_logprob_is_the_mean_log_softmax_of_the_question_tokens() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7))
    pair = ScoredPair((1, 2, 3, 4, 5), question_tokens=2)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    # tokens 4 and 5 are predicted by positions 2 and 3
    want = (log_softmax[2, 4] + log_softmax[3, 5]) / 2
    assert question_logprob(logits, pair) == pytest.approx(want)


def test_scoring_sequences_cut_passages_never_the_question() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    pairs = scoring_sequences("why?", ["x" * 500, "short"], encode, max_tokens=120)
    assert all(len(p.ids) <= 120 for p in pairs)
    assert all(p.ids[-p.question_tokens:] == tuple(encode(" why?")) for p in pairs)
    with pytest.raises(ConfigError, match="max_context_len"):
        scoring_sequences("q" * 200, ["p"], encode, max_tokens=120)


def test_embedding_sequences_report_cuts_and_end_with_eos() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    plain = EmbeddingConfig(strategy="plain", append_eos=True)
    seq = build_sequence("abc", plain, encode, 100, eos=(0,))
    assert seq.ids == (97, 98, 99, 0) and (seq.start, seq.end, seq.cut) == (0, 4, 0)
    cut = build_sequence("x" * 50, plain, encode, 10, eos=(0,))
    assert len(cut.ids) == 10 and cut.ids[-1] == 0 and cut.cut == 41
    with pytest.raises(ValueError, match="prompteol"):
        EmbeddingConfig(strategy="prompteol", pooling="mean")


def test_declared_pooling_reads_sentence_transformers_config(tmp_path: Path) -> None:
    assert declared_pooling(tmp_path) is None
    (tmp_path / "1_Pooling").mkdir()
    config = tmp_path / "1_Pooling" / "config.json"
    config.write_text('{"pooling_mode_lasttoken": true, "pooling_mode_mean_tokens": false}')
    assert declared_pooling(tmp_path) == "last"
    config.write_text("not json")
    assert declared_pooling(tmp_path) is None


def test_short_model_name_never_holds_a_path() -> None:
    assert short_model_name("smollm2") == "smollm2"
    assert short_model_name("/models/qwen3-0.6b.rkllm") == "qwen3-0.6b"
    assert short_model_name("/models/hf-dir/") == "hf-dir"


def test_fit_context_keeps_whole_passages_then_cuts_or_drops() -> None:
    from rkllm_core.retrieval import fit_context

    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(ids: list[int]) -> str:
        return "".join(map(chr, ids))

    sep = len("\n\n")
    kept = fit_context(["a" * 10, "b" * 10, "c" * 100], 10 + sep + 10 + sep + 5, encode, decode)
    assert kept == ["a" * 10, "b" * 10]  # 5 tokens left: under a quarter of the budget
    kept = fit_context(["a" * 10, "c" * 100], 10 + sep + 30, encode, decode)
    assert kept == ["a" * 10, "c" * 30]  # cut to the room left
    total = sum(len(encode(k)) for k in kept) + sep * (len(kept) - 1)
    assert total <= 10 + sep + 30
