"""Linear embedding adapters: a generative model's hidden states mapped into a retrieval space.

A small decoder's last hidden layer, even centred, ranks real passages worse than BM25 (the
Python FAQ: recall@5 0.56 with SmolLM2-135M against BM25's 0.76). An adapter is one matrix,
fitted once per model offline (``scripts/fit_embedding_adapter.py``): it maps the PromptEOL
features of a text (last-token state and the mean state over the text's own tokens, each side
centred on the built-in reference sample) onto the sentence space of a small trained sentence
encoder, by ridge regression on man-page text (never on a benchmark set). It is applied on the
CPU after the NPU's forward pass: one (2·hidden × dim) matrix product per text.

An adapter carries the fingerprint of the model it was fitted on: the mean query and passage
features of the reference sample. The embedder computes those means anyway (for centring); an
adapter is used only when both match this model's (cosine ≥ :data:`MATCH_COSINE`), so a
quantized conversion of the same model (a ``.rkllm`` file on the board) finds its adapter
and any other model never gets a wrong one.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

logger = logging.getLogger(__name__)

MATCH_COSINE = 0.98
"""How close an adapter's fingerprint must be to the model's reference means."""
BUILTIN_DIR = Path(__file__).with_name("adapters")
"""Adapters shipped with the package (one per demo model)."""
_MAX_FILE_BYTES = 64 * 1024 * 1024
_FIELDS = ("matrix", "query_mean", "passage_mean")


@dataclass(frozen=True, slots=True)
class EmbeddingAdapter:
    """One fitted adapter: ``features @ matrix`` for centred features (rows)."""

    name: str
    matrix: np.ndarray
    query_mean: np.ndarray
    passage_mean: np.ndarray

    @property
    def features(self) -> int:
        """Length of the feature vector it takes (twice the model's hidden size)."""
        return int(self.matrix.shape[0])

    def matches(self, query_mean: np.ndarray, passage_mean: np.ndarray) -> bool:
        """True when this adapter was fitted on the model whose reference means these are."""
        if query_mean.shape != (self.features,) or passage_mean.shape != (self.features,):
            return False
        return bool(_cosine(self.query_mean, query_mean) >= MATCH_COSINE
                    and _cosine(self.passage_mean, passage_mean) >= MATCH_COSINE)

    def apply(self, centred: np.ndarray) -> np.ndarray:
        """Centred features (n, features) to adapted vectors (n, dim)."""
        return (centred.astype(np.float32) @ self.matrix).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the adapter as an ``.npz`` file (written whole, then renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        try:
            with tmp.open("wb") as out:
                np.savez(out, matrix=self.matrix.astype(np.float16),
                         query_mean=self.query_mean.astype(np.float32),
                         passage_mean=self.passage_mean.astype(np.float32))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denom if denom else 0.0


def load_adapter(path: Path) -> EmbeddingAdapter:
    """Read an adapter file; a malformed one is a ConfigError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ConfigError(f"embedding adapter {path} is larger than {_MAX_FILE_BYTES} bytes")
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in _FIELDS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"embedding adapter {path} cannot be read ({exc}): refit it with"
            " scripts/fit_embedding_adapter.py or remove it"
        ) from exc
    matrix, query_mean, passage_mean = (arrays[key] for key in _FIELDS)
    if (matrix.ndim != 2 or query_mean.shape != (matrix.shape[0],)
            or passage_mean.shape != (matrix.shape[0],)
            or not all(np.isfinite(a).all() for a in arrays.values())):
        raise ConfigError(
            f"embedding adapter {path} is malformed (matrix {matrix.shape}, means"
            f" {query_mean.shape} / {passage_mean.shape}): refit it or remove it"
        )
    return EmbeddingAdapter(path.stem, matrix.astype(np.float32),
                            query_mean.astype(np.float32), passage_mean.astype(np.float32))


def adapter_files(extra_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """Candidate adapter files: the user's folders first, then the built-in ones."""
    files: list[Path] = []
    for folder in (*extra_dirs, BUILTIN_DIR):
        if folder.is_dir():
            files.extend(sorted(folder.glob("*.npz")))
    return files


def find_adapter(
    query_mean: np.ndarray, passage_mean: np.ndarray, extra_dirs: tuple[Path, ...] = ()
) -> EmbeddingAdapter | None:
    """The first adapter fitted on the model with these reference means, or None.

    Unreadable files in a user folder are skipped with a warning (one bad file must not
    stop embeddings); a bad built-in file is a packaging error and raises.
    """
    for path in adapter_files(extra_dirs):
        try:
            adapter = load_adapter(path)
        except ConfigError as exc:
            if path.parent == BUILTIN_DIR:
                raise
            logger.warning("embedding adapter skipped: %s", exc)
            continue
        if adapter.matches(query_mean, passage_mean):
            return adapter
    return None
