"""Retrieval-augmented answers with LangChain on an RKLLM model (NPU board or PC).

Splits a folder of .txt / .md files into chunks of about 160 tokens (LangChain's own splitter,
counting the model's tokens), indexes them with rkllm-py's default retrieval (BM25 and
hidden-state embeddings, mapped through the model's embedding adapter, fused by reciprocal
rank: benchmarks/retrieval.py measures it; ``--rerank`` adds the logits reranker), and streams
an answer from ``ChatRKLLM``. The retrieved chunks are fitted to the context window by token
count. One model in memory serves the embeddings, the reranker and the chat model.

    python examples/langchain_rag.py --question "Who built the Amber Span?"
    python examples/langchain_rag.py --docs /usr/share/common-licenses --question "..."

The same script runs unchanged on an RK3588 board with a ``.rkllm`` file (``--model``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_text_splitters import RecursiveCharacterTextSplitter

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings, RKLLMHybridRetriever, RKLLMReranker
from rkllm_core.retrieval import fit_context

DEFAULT_DOCS = Path(__file__).parent / "data"
DEFAULT_QUESTION = "Who designed the Amber Span, and when was it restored?"
SUFFIXES = (".txt", ".md", "")  # "" = files without a suffix (plain-text docs, licences)

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the context below. Be brief.\n\n{context}"),
    ("human", "{question}"),
])


def load_documents(folder: Path) -> list[Document]:
    """One Document per readable text file under ``folder``."""
    docs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() not in SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (UnicodeDecodeError, OSError):
            continue  # binary or unreadable: not a text document
        if text:
            docs.append(Document(page_content=text, metadata={"source": path.name}))
    if not docs:
        raise SystemExit(f"no .txt or .md files under {folder}")
    return docs


def format_docs(docs: list[Document], budget: int, llm: ChatRKLLM) -> str:
    """The retrieved chunks, best first, cut to ``budget`` tokens of the model."""
    model = llm.core_model
    texts = [f"[{d.metadata['source']}]\n{d.page_content}" for d in docs]
    return "\n\n".join(fit_context(texts, budget, model.tokenize, model.detokenize))


def main(argv: list[str] | None = None) -> int:
    """Index, retrieve, answer; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="folder of text files")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--model", default="smollm2", help="model file or demo model name")
    parser.add_argument("-k", type=int, default=2, help="chunks given to the model")
    parser.add_argument("--chunk-tokens", type=int, default=160, help="tokens per chunk")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length cap")
    parser.add_argument("--rerank", action="store_true",
                        help="also rerank by the model's logits (slower; see README figures)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    llm = ChatRKLLM(model=args.model, temperature=0, max_tokens=args.max_tokens)
    model = llm.core_model  # loaded once, shared by the classes below
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=args.chunk_tokens, chunk_overlap=args.chunk_tokens // 10,
        length_function=model.count_tokens,
    )
    docs = load_documents(args.docs)
    chunks = splitter.split_documents(docs)
    retriever = RKLLMHybridRetriever.from_documents(
        chunks, RKLLMEmbeddings(model=args.model, show_progress=True), k=args.k,
        reranker=None if not args.rerank else RKLLMReranker(model=args.model),
    )

    # the context gets what the window has left after the prompt and the answer
    empty = PROMPT.invoke({"context": "", "question": args.question}).to_messages()
    budget = (model.config.max_context_len - llm.get_num_tokens_from_messages(empty)
              - args.max_tokens - 16)

    print(f"Q: {args.question}\nA: ", end="", flush=True)
    retrieved = retriever.invoke(args.question)
    prompt = PROMPT.invoke({"context": format_docs(retrieved, budget, llm),
                            "question": args.question})
    finish = None
    for chunk in llm.stream(prompt):
        print(chunk.content, end="", flush=True)
        finish = chunk.response_metadata.get("finish_reason") or finish
    if finish == "length":
        print(f" […cut: the answer reached --max-tokens {args.max_tokens}]", end="")
    print("\n\nSources:")
    for doc in retrieved:
        print(f"  - {doc.metadata['source']}")
    print(f"\n({len(docs)} documents indexed as {len(chunks)} chunks,"
          f" {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
