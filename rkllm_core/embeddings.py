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

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import EmbeddingConfig, Pooling
from .engine import EngineInfo
from .errors import ConfigError, ContextLengthError

if TYPE_CHECKING:
    from .retrieval.adapter import EmbeddingAdapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddingSequence:
    """Token ids to run, the [start, end) span to pool over, how many text tokens were cut,
    and the span of the text's own tokens (where a template wraps it)."""

    ids: tuple[int, ...]
    start: int
    end: int
    cut: int = 0
    text_span: tuple[int, int] | None = None


Encode = Callable[[str], list[int]]


def build_sequence(
    text: str,
    config: EmbeddingConfig,
    encode: Encode,
    max_tokens: int,
    eos: Sequence[int] = (),
) -> EmbeddingSequence:
    """Token ids for one text under ``config.strategy``, cut to fit ``max_tokens``.

    ``eos`` ends the text (``config.append_eos``); ``cut`` says how many of the text's tokens
    did not fit, for the caller to refuse or report.
    """
    # an empty text still needs one position to pool over
    text_ids = encode(text) or encode(" ")
    tail = list(eos)
    if config.strategy == "plain":
        budget = max(1, max_tokens - len(tail))
        kept = text_ids[:budget]
        ids = kept + tail
        # pool over the EOS too: dedicated embedding models are trained on its state
        return EmbeddingSequence(tuple(ids), 0, len(ids), len(text_ids) - len(kept))
    template = config.prompteol_template if config.strategy == "prompteol" else (
        config.echo_template
    )
    pieces = [encode(piece) if piece else [] for piece in template.split("{text}")]
    overhead = sum(len(p) for p in pieces) + len(tail)
    copies = len(pieces) - 1
    budget = max(1, (max_tokens - overhead) // copies)
    kept = text_ids[:budget]
    ids: list[int] = list(pieces[0])
    start = end = 0
    for copy in range(copies):
        start = len(ids)
        ids.extend(kept)
        end = len(ids)
        ids.extend(pieces[copy + 1])
    ids.extend(tail)
    cut = len(text_ids) - len(kept)
    if config.strategy == "prompteol":
        return EmbeddingSequence(tuple(ids), len(ids) - 1, len(ids), cut, (start, end))
    return EmbeddingSequence(tuple(ids), start, end, cut, (start, end))


def pool(hidden: np.ndarray, seq: EmbeddingSequence, pooling: Pooling) -> np.ndarray:
    """Pool hidden states (tokens, dim) over the sequence's span."""
    span = hidden[seq.start : seq.end]
    if pooling == "mean":
        return span.mean(axis=0)
    if pooling == "first":
        return span[0]
    return span[-1]


def adapter_features(hidden: np.ndarray, seq: EmbeddingSequence) -> np.ndarray:
    """What an embedding adapter takes: the pooled state, then the mean state over the
    text's own tokens (the template's tokens left out)."""
    start, end = seq.text_span or (seq.start, seq.end)
    return np.concatenate([hidden[seq.end - 1], hidden[start:end].mean(axis=0)])


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


EMBEDDING_MODEL_INSTRUCTION = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\n"
    "Query:"
)
"""The query side of dedicated decoder embedding models (Qwen3-Embedding's format)."""

_EMBEDDING_NAME_HINTS = ("embed", "gte-", "bge-", "e5-")


def is_embedding_model(info: EngineInfo) -> bool:
    """A dedicated sentence-embedding model: declared by its files, or named as one."""
    name = f"{info.model_name} {info.model_path}".lower()
    return info.embedding_pooling is not None or any(h in name for h in _EMBEDDING_NAME_HINTS)


def default_embedding_config(info: EngineInfo) -> EmbeddingConfig:
    """The strategy measured best for this kind of model (benchmarks/retrieval.py).

    Dedicated embedding models (Qwen3-Embedding and the like) were trained for last-token
    pooling of the plain text ending in EOS, with an instruction on the query side only.
    Generative chat models do best with PromptEOL and each side centred on its own mean
    (SmolLM2-135M, Python FAQ, 170 real questions: recall@5 0.45 without centring, 0.64
    with it; the query instruction of earlier releases lowered it).
    """
    if is_embedding_model(info):
        return EmbeddingConfig(
            strategy="plain",
            pooling=info.embedding_pooling or "last",
            append_eos=(info.embedding_pooling or "last") == "last",
            query_instruction=EMBEDDING_MODEL_INSTRUCTION,
        )
    return EmbeddingConfig(strategy="prompteol", center=True)


BatchHidden = Callable[[list[tuple[int, ...]]], list[np.ndarray]]
TextHidden = Callable[[str], np.ndarray]
Progress = Callable[[int], object]


class Embedder:
    """Texts to vectors for one model: sequences, batched hidden-state runs, pooling, centring.

    ``run_batch`` returns the last hidden layer of each token sequence; ``run_text`` of one
    text, for a runtime that tokenizes internally (``encode`` is then None).
    """

    def __init__(
        self,
        encode: Encode | None,
        run_batch: BatchHidden,
        run_text: TextHidden,
        window: int,
        eos: Sequence[int] = (),
        adapter_dirs: tuple[Path, ...] = (),
    ) -> None:
        self._encode = encode
        self._run_batch = run_batch
        self._run_text = run_text
        self._window = window
        self._eos = tuple(eos)
        self._adapter_dirs = adapter_dirs
        self._spaces: dict[tuple[object, ...], _Space] = {}
        self._lock = threading.Lock()

    def embed(
        self,
        texts: Sequence[str],
        config: EmbeddingConfig,
        is_query: bool,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Vectors (n, hidden) of ``texts`` under ``config``; ``progress(n)`` is called as
        each forward batch of n texts is done (one text per batch by default)."""
        space = self._space(config) if config.center else None
        adapter = space.adapter if space is not None else None
        raw = self._raw(texts, config, is_query, progress, features=adapter is not None)
        if space is not None:
            raw = raw - (space.query_mean if is_query else space.passage_mean)
        if adapter is not None:
            raw = adapter.apply(raw)
        return l2_normalize(raw) if config.normalize else raw

    def features(
        self, texts: Sequence[str], config: EmbeddingConfig, is_query: bool
    ) -> np.ndarray:
        """What an embedding adapter takes, uncentred (n, 2·hidden): the input of
        ``benchmarks/fit_embedding_adapter.py``. Needs the tokenizer."""
        if self._encode is None:
            raise ConfigError("embedding adapter features need the model's tokenizer")
        return self._raw(texts, config.model_copy(update={"truncate": True}), is_query,
                         features=True)

    def fingerprint(self, config: EmbeddingConfig) -> tuple[np.ndarray, np.ndarray]:
        """Mean query and passage :meth:`features` on the built-in reference sample: what
        an adapter fitted on this model stores, and what finds it again."""
        from .retrieval.reference import REFERENCE_PASSAGES, REFERENCE_QUESTIONS

        return (self.features(REFERENCE_QUESTIONS, config, True).mean(axis=0),
                self.features(REFERENCE_PASSAGES, config, False).mean(axis=0))

    def adapter_for(self, config: EmbeddingConfig) -> EmbeddingAdapter | None:
        """The embedding adapter ``config`` maps through on this model (None: none applies)."""
        return self._space(config).adapter if config.center else None

    def _raw(
        self,
        texts: Sequence[str],
        config: EmbeddingConfig,
        is_query: bool,
        progress: Progress | None = None,
        features: bool = False,
    ) -> np.ndarray:
        prefix = config.query_instruction if is_query else ""
        if self._encode is None:
            return self._raw_without_tokenizer(texts, prefix, config)
        limit = min(config.max_tokens or self._window, self._window)
        eos = self._eos if config.append_eos else ()
        seqs = [build_sequence(prefix + t, config, self._encode, limit, eos) for t in texts]
        self._check_cuts(seqs, config, limit)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))  # less padding
        vectors: list[np.ndarray] = [np.empty(0)] * len(seqs)
        for batch in chunked(order, config.batch_size):
            states = self._run_batch([seqs[i].ids for i in batch])
            for i, state in zip(batch, states, strict=True):
                vectors[i] = (adapter_features(state, seqs[i]) if features
                              else pool(state, seqs[i], config.pooling))
            if progress is not None:
                progress(len(batch))
        return np.stack(vectors).astype(np.float32)

    @staticmethod
    def _check_cuts(seqs: list[EmbeddingSequence], config: EmbeddingConfig, limit: int) -> None:
        cut = [(i, s) for i, s in enumerate(seqs) if s.cut]
        if not cut:
            return
        index, seq = cut[0]
        whole = len(seq.ids) + seq.cut
        if not config.truncate:
            raise ContextLengthError(
                whole, limit,
                f"text {index} ({len(cut)} of {len(seqs)} texts are too long) does not fit the"
                f" embedding window: split long documents into chunks (the frameworks' text"
                f" splitters), or pass truncate=True to embed only their first tokens",
            )
        logger.warning(
            "embedding: %d of %d texts cut to the %d-token window (text %d lost %d tokens)",
            len(cut), len(seqs), limit, index, seq.cut,
        )

    def _raw_without_tokenizer(
        self, texts: Sequence[str], prefix: str, config: EmbeddingConfig
    ) -> np.ndarray:
        rows = []
        for text in texts:
            body = prefix + text
            if config.strategy == "prompteol":
                body = config.prompteol_template.format(text=body)
            state = self._run_text(body)
            rows.append(pool(state, EmbeddingSequence((), 0, len(state)), config.pooling))
        return np.stack(rows).astype(np.float32)

    def _space(self, config: EmbeddingConfig) -> _Space:
        """Centring means (and the adapter, if one fits) of ``config``, once per config.

        Means are taken on the built-in reference sample. With ``config.adapter`` and
        PromptEOL, the means of the adapter's features (without a query instruction) are the
        model's fingerprint: a matching adapter is looked up by them; without one, the
        last-token half is kept.
        """
        key = (*config.vector_key(), config.adapter)
        with self._lock:
            if key not in self._spaces:
                from .retrieval.adapter import find_adapter
                from .retrieval.reference import REFERENCE_PASSAGES, REFERENCE_QUESTIONS

                features = (config.adapter and config.strategy == "prompteol"
                            and self._encode is not None)
                if features:
                    # the fingerprint names the model, whatever the query instruction; the
                    # queries are still centred on their own (instructed) mean
                    query_mean, passage_mean = self.fingerprint(
                        config.model_copy(update={"query_instruction": ""}))
                    adapter = find_adapter(query_mean, passage_mean, self._adapter_dirs)
                    if config.query_instruction:
                        query_mean = self.features(REFERENCE_QUESTIONS, config, True).mean(axis=0)
                    if adapter is None:
                        half = query_mean.shape[0] // 2  # adapter_features: pooled state first
                        query_mean, passage_mean = query_mean[:half], passage_mean[:half]
                else:
                    raw = config.model_copy(update={"truncate": True})
                    query_mean = self._raw(REFERENCE_QUESTIONS, raw, True).mean(axis=0)
                    passage_mean = self._raw(REFERENCE_PASSAGES, raw, False).mean(axis=0)
                    adapter = None
                if adapter is not None:
                    logger.info("embedding: adapter %s fits this model", adapter.name)
                self._spaces[key] = _Space(query_mean, passage_mean, adapter)
            return self._spaces[key]


@dataclass(frozen=True, slots=True)
class _Space:
    """Where one embedding configuration's vectors live on one model."""

    query_mean: np.ndarray
    passage_mean: np.ndarray
    adapter: EmbeddingAdapter | None


def chunked(order: Sequence[int], size: int) -> list[list[int]]:
    """Split into batches of at most ``size``."""
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


_POOLING_MODES = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "first",
}


def declared_pooling(model_dir: Path) -> Pooling | None:
    """The pooling a sentence-transformers model directory declares (``1_Pooling/config.json``).

    None for a generative model, or when the declaration cannot be read (a model still
    loads; it is then treated as generative).
    """
    config = model_dir / "1_Pooling" / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > 64 * 1024:
            return None
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key, pooling in _POOLING_MODES.items():
        if data.get(key) is True:
            return pooling  # type: ignore[return-value]
    return None
