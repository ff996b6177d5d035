"""End to end: a VectorStoreIndex with RKLLMEmbedding and a streaming query engine on RKLLM.

The documents are invented facts (no model can know them) with neutral file names that are
left out of the embedded text, and the distractors share the target's vocabulary (the same
towns, dates, buildings), so retrieval has to use the content, not a file name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.response.schema import StreamingResponse

from llamaindex_rkllm import RKLLM, RKLLMEmbedding

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

DOCS = {
    "festival": (
        "The town of Brellin holds its Salt Lantern festival every June. Fishermen carry "
        "lanterns filled with sea salt along the harbour wall at midnight."
    ),
    "observatory": (
        "The Quarrow Observatory sits on a hill above the town of Brellin. Its main telescope "
        "was built in 1893 and is used to watch comets and meteor showers."
    ),
    "bakery": (
        "Ostwick is famous for its blackberry rye bread. The oldest bakery in Ostwick bakes "
        "the loaves in a stone oven that has not gone cold since 1921."
    ),
    "ferry": (
        "A small ferry crosses the Tamsel estuary between Ostwick and Brellin four times a day. "
        "The crossing takes twenty minutes and the ferry carries bicycles for free."
    ),
    "choir": (
        "The Ostwick choir sings every December on the steps of the town hall. The choir was "
        "founded by a schoolteacher and has about sixty singers."
    ),
    "mine": (
        "The old tin mine near Brellin closed in 1954. Its tunnels run under the sea and are "
        "now a museum where visitors wear helmets with lamps."
    ),
}
QUESTIONS = {
    "bakery": "What kind of bread is Ostwick known for?",
    "ferry": "How long does the ferry crossing between Ostwick and Brellin take?",
    "mine": "When did the tin mine close?",
}


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    for index, text in enumerate(DOCS.values()):
        (folder / f"doc_{index}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def _doc_key(text: str) -> str:
    return next(key for key, body in DOCS.items() if body[:40] in " ".join(text.split()))


@pytest.fixture(scope="module")
def index(docs_dir: Path, llm: RKLLM) -> VectorStoreIndex:
    embed = RKLLMEmbedding(model=llm.core_model, strategy="echo", pooling="mean")
    documents = SimpleDirectoryReader(str(docs_dir)).load_data()
    for document in documents:
        # embed the content only: identical "file_path: …" headers would dilute mean pooling
        document.excluded_embed_metadata_keys = list(document.metadata)
    return VectorStoreIndex.from_documents(documents, embed_model=embed)


def test_retrieval_finds_the_right_document(index: VectorStoreIndex) -> None:
    retriever = index.as_retriever(similarity_top_k=len(DOCS))
    for key, question in QUESTIONS.items():
        ranked = retriever.retrieve(question)
        assert len(ranked) == len(DOCS)
        assert _doc_key(ranked[0].node.get_content()) == key, question
        assert ranked[0].score > ranked[1].score


def test_streaming_query_engine_end_to_end(
    index: VectorStoreIndex, llm: RKLLM, restore_settings: None
) -> None:
    Settings.llm = RKLLM(model=llm.core_model, max_new_tokens=16)
    engine = index.as_query_engine(streaming=True, similarity_top_k=2)
    response = engine.query(QUESTIONS["bakery"])
    assert isinstance(response, StreamingResponse)
    pieces = list(response.response_gen)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert _doc_key(response.source_nodes[0].node.get_content()) == "bakery"
    assert len(response.source_nodes) == 2


async def test_async_query_engine(index: VectorStoreIndex, llm: RKLLM) -> None:
    engine = index.as_query_engine(
        llm=RKLLM(model=llm.core_model, max_new_tokens=6), similarity_top_k=1
    )
    response = await engine.aquery(QUESTIONS["ferry"])
    assert str(response).strip()
    assert _doc_key(response.source_nodes[0].node.get_content()) == "ferry"


def test_example_script_runs(tmp_path: Path) -> None:
    """examples/llamaindex_rag.py as a user runs it, on the bundled example documents."""
    env = dict(os.environ)
    env.setdefault("RKLLM_CACHE_DIR", str(Path.home() / ".cache" / "rkllm"))
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "llamaindex_rag.py"),
        "--question",
        "How many days is giant kelp soaked to make kelp paper?",
        "--top-k",
        "1",
        "--max-tokens",
        "8",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "indexed" in out and "nodes in" in out
    answer = out.split("A: ", 1)[1].split("Sources:", 1)[0]
    assert answer.strip()
    sources = out.split("Sources:", 1)[1].strip().splitlines()
    assert len(sources) == 1
    assert "kelp_paper.txt" in sources[0]
    assert "Generating embeddings" in proc.stderr  # the progress bar was shown
