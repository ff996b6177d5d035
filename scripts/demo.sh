#!/usr/bin/env bash
# The main job: the RAG demo (LangChain) on the embedded demo model, SmolLM2-135M-Instruct.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh pc
exec .venv/bin/python examples/langchain_rag.py "$@"
