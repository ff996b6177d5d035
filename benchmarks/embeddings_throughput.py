"""Embedding throughput of RKLLMEmbeddings: batched embed_documents against one by one.

    python benchmarks/embeddings_throughput.py [--model smollm2] [--docs examples/data]

Both ways run in the same process on the same loaded model, after a warm-up call, on the
same texts; prints documents per second for each and the speed-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from langchain_rkllm import RKLLMEmbeddings


def texts_from(folder: Path, repeat: int) -> list[str]:
    """Paragraphs of the .txt/.md files under ``folder`` (repeated to get a steadier figure)."""
    paragraphs = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".txt", ".md"):
            text = path.read_text(encoding="utf-8")
            paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
    return paragraphs * repeat


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    default_docs = Path(__file__).parent.parent / "examples" / "data"
    parser.add_argument("--docs", type=Path, default=default_docs)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    emb = RKLLMEmbeddings(model=args.model, batch_size=args.batch_size)
    texts = texts_from(args.docs, args.repeat)
    emb.embed_documents(texts[:2])  # warm-up: load the model, first forward passes

    start = time.perf_counter()
    batched = emb.embed_documents(texts)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    single = [emb.embed_documents([t])[0] for t in texts]
    t_single = time.perf_counter() - start

    diff = float(np.max(np.abs(np.asarray(batched) - np.asarray(single))))
    print(f"model: {emb.client.name} ({emb.client.backend} engine), {len(texts)} texts,"
          f" batch_size={args.batch_size}")
    print(f"batched    : {len(texts) / t_batched:7.2f} docs/s  ({t_batched:.2f} s)")
    print(f"one by one : {len(texts) / t_single:7.2f} docs/s  ({t_single:.2f} s)")
    print(f"speed-up   : {t_single / t_batched:.2f}x   max |batched - single| = {diff:.2e}")


if __name__ == "__main__":
    main()
