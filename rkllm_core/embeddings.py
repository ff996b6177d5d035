"""Sentence embeddings from a generative model's last hidden layer.

Naive pooling of a decoder's hidden states retrieves poorly; the prompt-based strategies
make the model summarise the text in one position first:

- ``plain``: the text alone, pooled ``last`` / ``mean`` / ``first``;
- ``prompteol``: ``This sentence : "<text>" means in one word:"`` and the last token
  (Jiang et al. 2023, "Scaling Sentence Embeddings with LLMs");
- ``echo``: the text twice, pooled over the second copy, whose tokens have seen the whole
  text (Springer et al. 2024, "Repetition Improves Language Model Embeddings").

Texts are tokenized piecewise (template pieces and the text separately), so the span of the
text inside the template is known exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .config import EmbeddingConfig, Pooling


@dataclass(frozen=True, slots=True)
class EmbeddingSequence:
    """Token ids to run and the [start, end) span to pool over."""

    ids: tuple[int, ...]
    start: int
    end: int


Encode = Callable[[str], list[int]]


def build_sequence(
    text: str, config: EmbeddingConfig, encode: Encode, max_tokens: int
) -> EmbeddingSequence:
    """Token ids for one text under ``config.strategy``, truncated to fit ``max_tokens``."""
    # an empty text still needs one position to pool over
    text_ids = encode(text) or encode(" ")
    if config.strategy == "plain":
        text_ids = text_ids[:max_tokens]
        return EmbeddingSequence(tuple(text_ids), 0, len(text_ids))
    template = config.prompteol_template if config.strategy == "prompteol" else (
        config.echo_template
    )
    pieces = [encode(piece) if piece else [] for piece in template.split("{text}")]
    overhead = sum(len(p) for p in pieces)
    copies = len(pieces) - 1
    budget = max(1, (max_tokens - overhead) // copies)
    text_ids = text_ids[:budget]
    ids: list[int] = list(pieces[0])
    start = end = 0
    for copy in range(copies):
        start = len(ids)
        ids.extend(text_ids)
        end = len(ids)
        ids.extend(pieces[copy + 1])
    if config.strategy == "prompteol":
        return EmbeddingSequence(tuple(ids), len(ids) - 1, len(ids))
    return EmbeddingSequence(tuple(ids), start, end)


def pool(hidden: np.ndarray, seq: EmbeddingSequence, pooling: Pooling) -> np.ndarray:
    """Pool hidden states (tokens, dim) over the sequence's span."""
    span = hidden[seq.start : seq.end]
    if pooling == "mean":
        return span.mean(axis=0)
    if pooling == "first":
        return span[0]
    return span[-1]


def effective_pooling(config: EmbeddingConfig) -> Pooling:
    """PromptEOL is defined by its last token; other strategies use the configured pooling."""
    return "last" if config.strategy == "prompteol" else config.pooling


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def default_embedding_config(architecture: str | None, model_name: str) -> EmbeddingConfig:
    """The strategy measured best for this kind of model (see benchmarks/retrieval.py).

    Dedicated embedding models (Qwen3-Embedding and the like) were trained for last-token
    pooling of the plain text with an instruction on the query side; generative chat models
    do best with PromptEOL plus a retrieval instruction on queries (SmolLM2-135M, 30 invented
    facts: recall@1 0.93 against 0.33 for plain last-token and 0.73 for mean pooling).
    """
    name = model_name.lower()
    if "embed" in name or "gte" in name or "bge" in name:
        return EmbeddingConfig(
            strategy="plain",
            pooling="last",
            query_instruction=(
                "Instruct: Given a question, retrieve passages that answer it\nQuery: "
            ),
        )
    return EmbeddingConfig(strategy="prompteol", query_instruction=RETRIEVAL_INSTRUCTION)


RETRIEVAL_INSTRUCTION = "Find the passage that answers this question: "


def chunked(items: Sequence[EmbeddingSequence], size: int) -> list[list[EmbeddingSequence]]:
    """Split into batches of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
