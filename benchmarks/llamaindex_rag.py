"""Figures of the LlamaIndex RAG example: indexing throughput and query latency.

Runs the flow of ``examples/llamaindex_rag.py`` (SimpleDirectoryReader → VectorStoreIndex with
RKLLMEmbedding → streaming query engine on RKLLM) and prints:

- model load time (one load shared by the LLM and the embedding model);
- indexing throughput in nodes per second (embedding included);
- per question: time to first token, total time, prompt/completion tokens, decode rate.

    .venv/bin/python benchmarks/llamaindex_rag.py [--model smollm2] [--docs examples/data]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.node_parser import SentenceSplitter

from llamaindex_rkllm import RKLLM, RKLLMEmbedding

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "How many days is giant kelp soaked to make kelp paper?",
    "Who founded the Caddis Clockmaking School?",
    "What dish is the Orlen Night Market known for?",
]


def main() -> None:
    """Run the example flow and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--docs", type=Path, default=ROOT / "examples" / "data")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--strategy", default="echo", choices=["plain", "prompteol", "echo"])
    parser.add_argument("--pooling", default="mean", choices=["last", "mean", "first"])
    args = parser.parse_args()
    logging.getLogger("llama_index.core.readers.file.base").setLevel(logging.ERROR)

    start = time.perf_counter()
    llm = RKLLM(model=args.model, max_new_tokens=args.max_tokens)
    embed = RKLLMEmbedding(
        model=args.model,
        strategy=args.strategy,
        pooling=None if args.strategy == "prompteol" else args.pooling,
    )
    load_s = time.perf_counter() - start
    counter = TokenCountingHandler(tokenizer=llm.core_model.tokenize)
    # through Settings: the query engine hands its callback manager to the LLM it uses
    Settings.callback_manager = CallbackManager([counter])
    Settings.llm, Settings.embed_model = llm, embed
    Settings.node_parser = SentenceSplitter(chunk_size=256, chunk_overlap=20)

    documents = SimpleDirectoryReader(str(args.docs)).load_data()
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(documents, show_progress=False)
    index_s = time.perf_counter() - start
    nodes = len(index.docstore.docs)

    print(f"model            {llm.metadata.model_name} ({llm.core_model.backend} engine)")
    print(f"load             {load_s:.1f} s (one model for LLM and embeddings)")
    print(f"indexing         {nodes} nodes in {index_s:.2f} s = {nodes / index_s:.2f} nodes/s")
    print(
        f"embedding        strategy={embed.embedding_config.strategy}"
        f" pooling={embed.embedding_config.pooling}"
    )

    engine = index.as_query_engine(streaming=True, similarity_top_k=args.top_k)
    ttfts, totals = [], []
    for question in QUESTIONS:
        counter.reset_counts()
        start = time.perf_counter()
        response = engine.query(question)
        first = None
        for _ in response.response_gen:
            if first is None:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        ttft = first if first is not None else total
        ttfts.append(ttft)
        totals.append(total)
        prompt, completion = counter.prompt_llm_token_count, counter.completion_llm_token_count
        decode = completion / (total - ttft) if total > ttft and completion > 1 else 0.0
        print(
            f"query            ttft {ttft:6.2f} s  total {total:6.2f} s  prompt {prompt:4d} tok"
            f"  completion {completion:3d} tok  ~{decode:.1f} tok/s  | {question}"
        )
    print(
        f"median           ttft {statistics.median(ttfts):.2f} s"
        f"  total {statistics.median(totals):.2f} s over {len(QUESTIONS)} questions"
    )


if __name__ == "__main__":
    main()
