"""RAG with LlamaIndex on an RKLLM model: index a folder, ask a question, stream the answer.

    python examples/llamaindex_rag.py
    python examples/llamaindex_rag.py --docs my_notes/ --question "..." --model model.rkllm

Chunks of about 160 tokens (LlamaIndex's SentenceSplitter counting the model's tokens) are
retrieved with rkllm-py's default pipeline: BM25 and hidden-state embeddings (through the model's
embedding adapter) fused by reciprocal rank (benchmarks/retrieval.py measures it; ``--rerank``
adds the logits reranker). The retrieved
chunks are fitted to the context window by token count, and an answer cut by --max-tokens is
marked as cut. The same script runs on a PC (GGUF / Hugging Face models, PC engine) and on an
RK3588/RK3576 board (``.rkllm`` files, NPU engine); one model in memory serves all three roles.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.core.node_parser import SentenceSplitter

from llamaindex_rkllm import RKLLM, RKLLMEmbedding, RKLLMHybridRetriever, RKLLMRerank
from rkllm_core.retrieval import fit_context

DEFAULT_DOCS = Path(__file__).parent / "data"
DEFAULT_QUESTION = "How many days is giant kelp soaked to make kelp paper?"
PROMPT = (
    "Answer the question using only the context below. Be brief.\n\n{context}\n\n"
    "Question: {question}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="folder to index")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--model", default="smollm2", help="model file or demo model name")
    parser.add_argument("--top-k", type=int, default=2, help="source nodes given to the LLM")
    parser.add_argument("--max-tokens", type=int, default=96, help="answer length cap")
    parser.add_argument("--chunk-size", type=int, default=160, help="tokens per node")
    parser.add_argument("--rerank", action="store_true",
                        help="also rerank by the model's logits (slower; see README figures)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Index ``--docs``, answer ``--question`` with streaming, print the sources."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # SimpleDirectoryReader warns once per file that optional PDF/DOCX readers are missing;
    # this example reads text files only, so the warning is noise
    logging.getLogger("llama_index.core.readers.file.base").setLevel(logging.ERROR)
    if not args.docs.is_dir():
        print(f"error: {args.docs} is not a folder", file=sys.stderr)
        return 2

    llm = RKLLM(model=args.model, max_tokens=args.max_tokens)
    model = llm.core_model  # one model in memory for the LLM, embeddings and reranker
    embed_model = RKLLMEmbedding(model=model)
    splitter = SentenceSplitter(chunk_size=args.chunk_size, chunk_overlap=args.chunk_size // 10,
                                tokenizer=model.tokenize)

    documents = SimpleDirectoryReader(str(args.docs), recursive=True).load_data()
    start = time.perf_counter()
    nodes = splitter.get_nodes_from_documents(documents)
    index = VectorStoreIndex(nodes, embed_model=embed_model, show_progress=True)
    seconds = time.perf_counter() - start
    print(f"indexed {len(documents)} documents as {len(nodes)} nodes in {seconds:.1f} s")
    retriever = RKLLMHybridRetriever(
        index, nodes, k=args.top_k,
        reranker=None if not args.rerank else RKLLMRerank(model=model),
    )

    found = retriever.retrieve(args.question)
    # the context gets what the window has left after the prompt and the answer
    prompt = PROMPT.format(context="", question=args.question)
    budget = model.config.max_context_len - model.count_tokens(
        [{"role": "user", "content": prompt}]) - args.max_tokens - 16
    texts = [n.node.get_content() for n in found]
    context = "\n\n".join(fit_context(texts, budget, model.tokenize, model.detokenize))

    print(f"\nQ: {args.question}\nA: ", end="", flush=True)
    messages = [ChatMessage(role="user", content=PROMPT.format(context=context,
                                                               question=args.question))]
    finish = None
    for delta in llm.stream_chat(messages):
        print(delta.delta or "", end="", flush=True)
        finish = (delta.raw or {}).get("finish_reason") or finish
    if finish == "length":
        print(f" […cut: the answer reached --max-tokens {args.max_tokens}]", end="")
    print("\n\nSources:")
    for rank, source in enumerate(found, 1):
        name = source.node.metadata.get("file_name", source.node.node_id)
        snippet = " ".join(source.node.get_content().split())[:100]
        print(f"  {rank}. {name} (score {source.score:.3f}): {snippet}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
