"""Retrieval-augmented answers with LangChain on an RKLLM model (NPU board or PC).

Indexes a folder of .txt / .md files into LangChain's InMemoryVectorStore with
RKLLMEmbeddings, then answers a question with ``retriever | prompt | ChatRKLLM``, streaming
the answer and printing the sources. The chat model and the embeddings share one loaded model.

    python examples/langchain_rag.py --question "Who built the Amber Span?"
    python examples/langchain_rag.py --docs my_notes/ --model model.rkllm -k 3

The same script runs unchanged on an RK3588 board with a ``.rkllm`` file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings

DEFAULT_DOCS = Path(__file__).parent / "data"
DEFAULT_QUESTION = "Who designed the Amber Span, and when was it restored?"

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the context below. Be brief.\n\n{context}"),
    ("human", "{question}"),
])


def load_documents(folder: Path) -> list[Document]:
    """One Document per .txt / .md file (these files are short; no splitting needed)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".txt", ".md"))
    if not files:
        raise SystemExit(f"no .txt or .md files under {folder}")
    return [
        Document(page_content=p.read_text(encoding="utf-8").strip(), metadata={"source": p.name})
        for p in files
    ]


def format_docs(docs: list[Document]) -> str:
    """The retrieved documents as prompt context."""
    return "\n\n".join(f"[{d.metadata['source']}]\n{d.page_content}" for d in docs)


def main(argv: list[str] | None = None) -> int:
    """Index, retrieve, answer; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="folder of .txt/.md")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--model", default="smollm2", help="model file or demo model name")
    parser.add_argument("-k", type=int, default=2, help="documents to retrieve")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length cap")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    embeddings = RKLLMEmbeddings(model=args.model, show_progress=True)
    llm = ChatRKLLM(model=args.model, temperature=0, max_tokens=args.max_tokens)

    docs = load_documents(args.docs)
    store = InMemoryVectorStore(embeddings)
    store.add_documents(docs)  # one batched embed_documents call, with a progress bar
    retriever = store.as_retriever(search_kwargs={"k": args.k})

    # Retrieve once and reuse the documents for both the prompt and the source list.
    retrieve = RunnableParallel(docs=retriever, question=RunnablePassthrough())
    answer = (
        RunnablePassthrough.assign(context=lambda x: format_docs(x["docs"]))
        | PROMPT
        | llm
        | StrOutputParser()
    )

    print(f"Q: {args.question}\nA: ", end="", flush=True)
    retrieved = retrieve.invoke(args.question)
    for piece in answer.stream(retrieved):
        print(piece, end="", flush=True)
    print("\n\nSources:")
    for doc in retrieved["docs"]:
        print(f"  - {doc.metadata['source']}")
    print(f"\n({len(docs)} documents indexed, {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
