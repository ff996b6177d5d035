"""RAG with LlamaIndex on an RKLLM model: index a folder, ask a question, stream the answer.

    python examples/llamaindex_rag.py
    python examples/llamaindex_rag.py --docs my_notes/ --question "..." --model model.rkllm

The same script runs on a PC (GGUF / Hugging Face models, PC engine) and on an RK3588/RK3576
board (``.rkllm`` files, NPU engine). The LLM and the embedding model share one loaded model.

Embedding strategy: the "echo" strategy with mean pooling retrieved the right document for
every question on the multi-sentence documents in ``examples/data`` with SmolLM2-135M, where the
model's default (PromptEOL, measured on one-sentence passages) missed some; pass
``--strategy prompteol`` to compare.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from llamaindex_rkllm import RKLLM, RKLLMEmbedding

DEFAULT_DOCS = Path(__file__).parent / "data"
DEFAULT_QUESTION = "How many days is giant kelp soaked to make kelp paper?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="folder to index")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--model", default="smollm2", help="model file or demo model name")
    parser.add_argument("--top-k", type=int, default=2, help="source nodes given to the LLM")
    parser.add_argument("--max-tokens", type=int, default=96, help="answer length cap")
    parser.add_argument("--strategy", default="echo", choices=["plain", "prompteol", "echo"])
    parser.add_argument("--pooling", default="mean", choices=["last", "mean", "first"])
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per node")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Index ``--docs``, answer ``--question`` with streaming, print the sources."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # SimpleDirectoryReader warns once per file that optional PDF/DOCX readers are missing;
    # this example reads .md/.txt only, so the warning is noise
    logging.getLogger("llama_index.core.readers.file.base").setLevel(logging.ERROR)
    if not args.docs.is_dir():
        print(f"error: {args.docs} is not a folder", file=sys.stderr)
        return 2

    # one model in memory: both classes go through rkllm_core.shared_model
    Settings.llm = RKLLM(model=args.model, max_new_tokens=args.max_tokens)
    Settings.embed_model = RKLLMEmbedding(
        model=args.model,
        strategy=args.strategy,
        pooling=None if args.strategy == "prompteol" else args.pooling,
    )
    Settings.node_parser = SentenceSplitter(chunk_size=args.chunk_size, chunk_overlap=20)

    documents = SimpleDirectoryReader(str(args.docs)).load_data()
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(documents, show_progress=True)
    seconds = time.perf_counter() - start
    nodes = len(index.docstore.docs)
    print(f"indexed {len(documents)} documents as {nodes} nodes in {seconds:.1f} s")

    query_engine = index.as_query_engine(streaming=True, similarity_top_k=args.top_k)
    print(f"\nQ: {args.question}\nA: ", end="", flush=True)
    response = query_engine.query(args.question)
    for delta in response.response_gen:
        print(delta, end="", flush=True)
    print("\n\nSources:")
    for rank, source in enumerate(response.source_nodes, 1):
        name = source.node.metadata.get("file_name", source.node.node_id)
        snippet = " ".join(source.node.get_content().split())[:100]
        print(f"  {rank}. {name} (score {source.score:.3f}): {snippet}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
