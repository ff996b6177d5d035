"""examples/langchain_rag.py end to end on the demo model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("demo_model")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langchain_rag.py"


def test_rag_example_answers_and_cites(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("langchain_rag", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = module.main(["--question", "Who built the Amber Span?", "-k", "2",
                          "--max-tokens", "24"])
    out = capsys.readouterr().out
    assert status == 0
    answer = out.split("A: ", 1)[1].split("Sources:", 1)[0].strip()
    assert answer
    sources = [line.strip("- ").strip() for line in out.split("Sources:", 1)[1].splitlines()
               if line.strip().startswith("- ")]
    assert len(sources) == 2
    assert "amber_span.md" in sources
    assert "8 documents indexed" in out
