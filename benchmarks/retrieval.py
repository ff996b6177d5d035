"""Retrieval quality of each embedding strategy against BM25, in one run.

A small corpus of invented facts (no model can know them), one question per passage.
Prints recall@1 and recall@3 for every strategy and for BM25 (rank-bm25).

    .venv/bin/python benchmarks/retrieval.py [--model smollm2]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from rkllm_core import RKLLMModel, RuntimeConfig

DATA = Path(__file__).parent / "data" / "invented_facts.json"

STRATEGIES: dict[str, dict] = {
    "plain / last": {"strategy": "plain", "pooling": "last"},
    "plain / mean": {"strategy": "plain", "pooling": "mean"},
    "prompteol": {"strategy": "prompteol"},
    "echo / mean": {"strategy": "echo", "pooling": "mean"},
    "echo / last": {"strategy": "echo", "pooling": "last"},
    "prompteol + query instr.": {
        "strategy": "prompteol",
        "query_instruction": "Find the passage that answers this question: ",
    },
}


def recall(scores: np.ndarray, k: int) -> float:
    """Fraction of questions whose passage (same index) ranks in the top k."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([i in row for i, row in enumerate(top)]))


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens for BM25."""
    return re.findall(r"[a-z0-9]+", text.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    data = json.loads(DATA.read_text())
    passages, questions = data["passages"], data["questions"]

    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([tokens(p) for p in passages])
    bm25_scores = np.stack([bm25.get_scores(tokens(q)) for q in questions])
    rows = [("BM25 (rank-bm25)", recall(bm25_scores, 1), recall(bm25_scores, 3), 0.0)]

    with RKLLMModel(args.model, RuntimeConfig(max_context_len=1024)) as model:
        default = model.embedding_config
        for name, options in STRATEGIES.items():
            start = time.perf_counter()
            docs = model.embed(passages, **options)
            queries = model.embed(questions, is_query=True, **options)
            elapsed = time.perf_counter() - start
            scores = queries @ docs.T
            rows.append((name, recall(scores, 1), recall(scores, 3), elapsed))
        print(f"model: {model.name}; default strategy: {default.strategy}"
              f" (pooling {default.pooling}); {len(passages)} passages, {len(questions)} questions")
    print(f"{'strategy':<28} {'recall@1':>9} {'recall@3':>9} {'seconds':>8}")
    for name, r1, r3, seconds in rows:
        print(f"{name:<28} {r1:>9.3f} {r3:>9.3f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
