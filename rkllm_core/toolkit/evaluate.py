"""Perplexity with Rockchip's recipe, and the fixed English corpus the project measures on.

Recipe (Rockchip's PC-simulation PPL): concatenate the text, tokenize it once, split the ids
into non-overlapping 512-token windows (a trailing partial window is dropped), take the mean
next-token cross-entropy over every predicted position of every window, and exponentiate.

Corpus: the Python tutorial from Debian's ``python3-doc`` package (reStructuredText sources
under ``/usr/share/doc/python3*/html/_sources``), lightly stripped of markup: real English prose
with some code. ``python-docs`` names the evaluation text (the tutorial), ``python-docs-howto``
a disjoint text for calibration (the HOWTOs).
"""

from __future__ import annotations

import glob
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

WINDOW = 512
_DOC_ROOTS = ("/usr/share/doc/python3/html/_sources", "/usr/share/doc/python3.*/html/_sources")
CORPORA = {"python-docs": "tutorial", "python-docs-howto": "howto"}


@dataclass
class PerplexityResult:
    """Perplexity and what it was computed over."""

    perplexity: float
    mean_nll: float
    tokens: int  # predicted positions
    windows: int


def _clean_rst(text: str) -> str:
    text = re.sub(r":[a-zA-Z:]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :role:`x <y>`
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(".. ") or (s and set(s) <= set("=*-^~#\"'`+")):
            continue  # directives, comments, heading underlines
        if s.startswith(":") and s.count(":") >= 2 and " " not in s.split(":")[1]:
            continue  # field lists such as :synopsis:
        lines.append(line.rstrip())
    text = "\n".join(lines).replace("``", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def find_doc_sources() -> Path | None:
    """The python3-doc reStructuredText source directory, if the package is installed."""
    for pattern in _DOC_ROOTS:
        for hit in sorted(glob.glob(pattern)):
            if Path(hit, "tutorial").is_dir():
                return Path(hit)
    return None


def load_corpus(name_or_path: str) -> str:
    """Text of a named corpus (``python-docs``, ``python-docs-howto``) or of a text file."""
    if name_or_path in CORPORA:
        root = find_doc_sources()
        if root is None:
            raise ConfigError(
                f"corpus {name_or_path!r} needs Debian's python3-doc package"
                f" (apt-get install python3-doc), or pass the path of a text file"
            )
        files = sorted((root / CORPORA[name_or_path]).glob("*.rst.txt"))
        return "\n\n".join(_clean_rst(f.read_text(encoding="utf-8")) for f in files)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"corpus {name_or_path!r} is neither a known corpus ({', '.join(CORPORA)}) nor a file"
        )
    return path.read_text(encoding="utf-8")


def tokenize_corpus(tokenizer: Any, text: str) -> Any:
    """All token ids of ``text`` as a 1-D LongTensor (no special tokens added)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def perplexity(
    model: Any,
    ids: Any,
    window: int = WINDOW,
    max_windows: int | None = None,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of ``model`` on token ids ``ids`` with non-overlapping ``window``-token windows."""
    import torch
    from tqdm.auto import tqdm

    n_windows = ids.numel() // window
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ConfigError(
            f"the text has {ids.numel()} tokens, fewer than one {window}-token window"
        )
    device = next(model.parameters()).device
    total_nll = 0.0
    count = 0
    with torch.no_grad():
        for i in tqdm(range(n_windows), desc=desc, unit="window", leave=False):
            chunk = ids[i * window : (i + 1) * window].unsqueeze(0).to(device)
            logits = model(input_ids=chunk, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
            total_nll += float(nll)
            count += chunk.shape[1] - 1
    mean = total_nll / count
    return PerplexityResult(math.exp(mean), mean, count, n_windows)


def calibration_samples(tokenizer: Any, text: str, n: int, tokens: int) -> list[dict[str, str]]:
    """``n`` calibration samples of about ``tokens`` tokens each, cut from ``text`` in order."""
    ids = tokenize_corpus(tokenizer, text)
    out = []
    for i in range(min(n, ids.numel() // tokens)):
        chunk = ids[i * tokens : (i + 1) * tokens].tolist()
        out.append({"input": tokenizer.decode(chunk), "target": ""})
    return out
