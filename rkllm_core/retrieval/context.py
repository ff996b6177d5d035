"""Fitting retrieved passages into the prompt by token count, so a RAG prompt never
overflows the context window (a ContextLengthError never reaches the user)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

Encode = Callable[[str], list[int]]
Decode = Callable[[list[int]], str]


def fit_context(
    passages: Sequence[str], budget: int, encode: Encode, decode: Decode,
    separator: str = "\n\n",
) -> list[str]:
    """The passages, best first, that fit in ``budget`` tokens together with separators.

    Whole passages are kept while they fit; the first one that does not is cut at a token
    boundary when at least a quarter of the budget is left for it, else dropped. Cuts and
    drops are logged.
    """
    kept: list[str] = []
    left = budget
    gap = len(encode(separator)) if separator else 0
    for index, passage in enumerate(passages):
        need = len(encode(passage)) + (gap if kept else 0)
        if need <= left:
            kept.append(passage)
            left -= need
            continue
        room = left - (gap if kept else 0)
        if room >= max(1, budget // 4):
            kept.append(decode(encode(passage)[:room]))
            logger.info("context: passage %d cut to %d tokens to fit the window", index, room)
        dropped = len(passages) - len(kept)
        if dropped:
            logger.info("context: %d of %d passages left out to fit the window",
                        dropped, len(passages))
        break
    return kept
