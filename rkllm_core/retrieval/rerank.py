"""Reranking (question, passage) pairs with the generative model's own logits.

The score is the mean log-probability of the question's tokens after the passage and an
instruction to write a question about it: unsupervised passage reranking (Sachan et al. 2022,
"Improving Passage Retrieval with Zero-Shot Question Generation"). A generative model is good
at exactly this, and it needs nothing but the logits mode, so it runs on the NPU too. A yes/no
relevance prompt (P(yes) against P(no)) was measured and made rankings worse on small models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

PASSAGE_PREFIX = "Passage: "
QUESTION_PROMPT = "\nPlease write a question based on this passage.\nQuestion:"


@dataclass(frozen=True, slots=True)
class ScoredPair:
    """One scoring sequence: ``ids`` and how many trailing tokens are the question."""

    ids: tuple[int, ...]
    question_tokens: int


Encode = Callable[[str], list[int]]
BatchLogits = Callable[[list[tuple[int, ...]]], list[np.ndarray]]


def scoring_sequences(
    query: str, passages: Sequence[str], encode: Encode, max_tokens: int
) -> list[ScoredPair]:
    """Token sequences for every (query, passage) pair, passages cut to fit ``max_tokens``.

    The question goes last and is never cut: it is what is scored. A passage that does not fit
    is cut at its end (the start of a chunk usually states its topic).
    """
    prefix = encode(PASSAGE_PREFIX)
    prompt = encode(QUESTION_PROMPT)
    question = encode(" " + query.strip())
    if not question:
        raise ConfigError("query is empty: give a question to rerank against")
    budget = max_tokens - len(prefix) - len(prompt) - len(question)
    if budget < 1:
        raise ConfigError(
            f"query is {len(question)} tokens: too long to rerank within max_context_len"
            f" {max_tokens}; shorten it or raise max_context_len"
        )
    pairs = []
    for passage in passages:
        body = encode(passage)[:budget] or encode(" ")
        pairs.append(ScoredPair(tuple(prefix + body + prompt + question), len(question)))
    return pairs


def question_logprob(logits: np.ndarray, pair: ScoredPair) -> float:
    """Mean log-probability of the question tokens under ``logits`` (tokens, vocab)."""
    n = pair.question_tokens
    # logits at position t predict token t + 1
    rows = logits[len(pair.ids) - n - 1 : len(pair.ids) - 1].astype(np.float64)
    targets = np.asarray(pair.ids[-n:])
    peak = rows.max(axis=1)
    log_norm = np.log(np.exp(rows - peak[:, None]).sum(axis=1)) + peak
    return float((rows[np.arange(n), targets] - log_norm).mean())


def query_likelihood(
    pairs: Sequence[ScoredPair], batch_logits: BatchLogits, batch_size: int
) -> np.ndarray:
    """Scores of the pairs (higher is more relevant), computed ``batch_size`` at a time."""
    scores = np.empty(len(pairs), dtype=np.float64)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].ids))  # less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        outputs = batch_logits([pairs[i].ids for i in chunk])
        for i, logits in zip(chunk, outputs, strict=True):
            scores[i] = question_logprob(logits, pairs[i])
    return scores


@dataclass(frozen=True, slots=True)
class Ranked:
    """A passage's position in the input list and its relevance score (higher is better)."""

    index: int
    score: float


def rank(scores: np.ndarray, top_n: int | None) -> list[Ranked]:
    """Indices by descending score (stable for ties), the first ``top_n`` of them."""
    if top_n is not None and top_n < 1:
        raise ConfigError(f"top_n must be >= 1 or None, got {top_n}")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [Ranked(i, float(scores[i])) for i in order[:top_n]]
