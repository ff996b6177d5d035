"""Reciprocal rank fusion (Cormack et al. 2009): merge rankings by 1 / (k + rank)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from ..errors import ConfigError

K = TypeVar("K", bound=Hashable)

RRF_K = 60
"""The constant of the original paper; LangChain's EnsembleRetriever uses the same."""


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[K]],
    *,
    weights: Sequence[float] | None = None,
    k: int = RRF_K,
) -> list[tuple[K, float]]:
    """Fuse ranked lists of keys (best first) into one, best first, with the fused scores.

    A key missing from a list simply gets nothing from it. Ties keep first-seen order.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ConfigError(
            f"weights has {len(weights)} entries for {len(rankings)} rankings: give one each"
        )
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k}")
    scores: dict[K, float] = {}
    for weight, ranking in zip(weights, rankings, strict=True):
        for rank, key in enumerate(ranking):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank + 1)
    return sorted(scores.items(), key=lambda item: -item[1])
