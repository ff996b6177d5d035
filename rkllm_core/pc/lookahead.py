"""Draft tokens for greedy decoding from the text already in the context (prompt lookup).

Answers repeat their context: names, code identifiers, quoted passages, the phrase just
written. When the last few tokens occurred earlier, the tokens that followed them then are a
cheap guess of what follows now. The engine forwards the guesses together with the sampled
token, in one pass that reads the weights once, and keeps the ones greedy sampling confirms.
Greedy decoding makes the same choices either way: a guess only saves a forward pass when
it is what the model picks (the logits of the rows agree with a one-token step to float
rounding).
"""

from __future__ import annotations

from collections.abc import Iterable


class PromptLookup:
    """Proposes up to ``max_draft`` tokens after the latest earlier match of the last n-gram.

    Longer n-grams are tried first (``ngrams``, longest first); a match of a shorter one is a
    weaker guess and proposes fewer tokens. Negative ids (embedding-input positions) end a
    draft.
    """

    def __init__(
        self, history: Iterable[int], max_draft: int = 4, ngrams: tuple[int, ...] = (3, 2)
    ) -> None:
        self.max_draft = max_draft
        self.ngrams = tuple(sorted(ngrams, reverse=True))
        self.tokens: list[int] = []
        # n-gram -> end index (exclusive) of its latest occurrence, indexed one token late so
        # that the sequence's own suffix is never its own match
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.ngrams}
        self.extend(history)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens to the sequence the guesses are drawn from."""
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 1  # index the n-grams ending just before the new token
            for n, ends in self._ends.items():
                if end >= n:
                    ends[tuple(self.tokens[end - n : end])] = end

    def propose(self, limit: int | None = None) -> list[int]:
        """Guesses for the tokens after the current sequence (possibly none)."""
        room = self.max_draft if limit is None else min(self.max_draft, limit)
        if room <= 0:
            return []
        for rank, n in enumerate(self.ngrams):
            if len(self.tokens) < n:
                continue
            end = self._ends[n].get(tuple(self.tokens[-n:]))
            if end is None:
                continue
            draft = []
            for token in self.tokens[end : end + max(1, room >> rank)]:
                if token < 0:
                    break
                draft.append(token)
            return draft
        return []
