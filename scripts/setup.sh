#!/usr/bin/env bash
# Create .venv and install rkllm-py with the given extras; does nothing when already done.
# Usage: bash scripts/setup.sh [extras]   (default extras: pc)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-pc}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.rkllm-installed-${extras//,/-}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned: this exact CPU build is what the project is tested with (an unpinned
# torch pulls a multi-GB CUDA build)
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
echo "$want" > "$stamp"
