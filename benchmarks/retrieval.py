"""Retrieval quality of each embedding strategy against BM25, in one run.

A small corpus of invented facts (no model can know them), one question per fact, in two
shapes: 30 one-sentence passages, and the same facts grouped three to a paragraph (10
passages: a question must find the paragraph holding its fact, as with real chunks).
Prints recall@1 and recall@3 for every strategy and for BM25 (rank-bm25), per corpus.

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
    "echo / mean + query instr.": {
        "strategy": "echo",
        "pooling": "mean",
        "query_instruction": "Find the passage that answers this question: ",
    },
    "prompteol + query instr.": {
        "strategy": "prompteol",
        "query_instruction": "Find the passage that answers this question: ",
    },
}


def recall(scores: np.ndarray, answers: list[int], k: int) -> float:
    """Fraction of questions whose passage ranks in the top k."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([answer in row for answer, row in zip(answers, top, strict=True)]))


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens for BM25."""
    return re.findall(r"[a-z0-9]+", text.lower())


def corpora(passages: list[str]) -> dict[str, tuple[list[str], list[int]]]:
    """The two corpus shapes: (passages, index of the passage answering each question)."""
    paragraphs = [" ".join(passages[i : i + 3]) for i in range(0, len(passages), 3)]
    return {
        "sentences": (passages, list(range(len(passages)))),
        "paragraphs": (paragraphs, [i // 3 for i in range(len(passages))]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    data = json.loads(DATA.read_text())
    questions = data["questions"]

    from rank_bm25 import BM25Okapi

    rows: list[tuple[str, str, float, float, float]] = []
    shapes = corpora(data["passages"])
    for shape, (docs_text, answers) in shapes.items():
        bm25 = BM25Okapi([tokens(p) for p in docs_text])
        scores = np.stack([bm25.get_scores(tokens(q)) for q in questions])
        rows.append((shape, "BM25 (rank-bm25)", recall(scores, answers, 1),
                     recall(scores, answers, 3), 0.0))

    with RKLLMModel(args.model, RuntimeConfig(max_context_len=1024)) as model:
        default = model.embedding_config
        for name, options in STRATEGIES.items():
            # every row states its query instruction (the model default may have one)
            options = {"query_instruction": "", **options}
            queries = model.embed(questions, is_query=True, **options)
            for shape, (docs_text, answers) in shapes.items():
                start = time.perf_counter()
                docs = model.embed(docs_text, **options)
                elapsed = time.perf_counter() - start
                scores = queries @ docs.T
                rows.append((shape, name, recall(scores, answers, 1),
                             recall(scores, answers, 3), elapsed))
        print(f"model: {model.name}; default strategy: {default.strategy}"
              f" (pooling {default.pooling}, query instruction {default.query_instruction!r});"
              f" {len(questions)} questions")
    print(f"{'corpus':<11} {'strategy':<28} {'recall@1':>9} {'recall@3':>9} {'doc s':>7}")
    for shape, name, r1, r3, seconds in sorted(rows, key=lambda r: r[0] != "sentences"):
        print(f"{shape:<11} {name:<28} {r1:>9.3f} {r3:>9.3f} {seconds:>7.1f}")


if __name__ == "__main__":
    main()
