"""Incremental detokenization that only ever releases whole UTF-8 characters."""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    Byte-level tokenizers split multi-byte characters across tokens; decoding such a prefix
    yields U+FFFD. Like the runtime's WAITING state, the delta is held back until the
    character is complete. Only a short window of tokens is re-decoded each step, so the cost
    per token stays constant.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of a run (an unfinished character is dropped)."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix) :].rstrip("\ufffd")
