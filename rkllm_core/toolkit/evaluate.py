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
from .quant.formats import ACT_MODES

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
    """Perplexity of ``model`` on ``ids`` over non-overlapping ``window``-token windows."""
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


# --------------------------------------------------------------------------- perplexity table


@dataclass
class QuantConfig:
    """One row of a perplexity table: ``float`` or
    ``DTYPE[:ALGORITHM][:dynamic|:per_token][:opt]``."""

    label: str
    dtype: str | None  # None: the float model
    algorithm: str = "normal"
    optimization_level: int = 0
    activation_mode: str = "static"

    @classmethod
    def parse(cls, spec: str) -> QuantConfig:
        parts = [p.strip().lower() for p in spec.split(":") if p.strip()]
        if not parts:
            raise ConfigError("empty quantization spec")
        if parts[0] in ("float", "fp32", "fp16"):
            return cls("float", None)
        cfg = cls(spec, parts[0])
        for p in parts[1:]:
            if p == "opt":
                cfg.optimization_level = 1
            elif p.replace("-", "_") in ACT_MODES:
                cfg.activation_mode = p.replace("-", "_")
            else:
                cfg.algorithm = p
        return cfg

    def platform(self) -> tuple[str, int]:
        """The first platform (and its core count) that runs this dtype."""
        from .quant.formats import PLATFORMS

        for p in PLATFORMS.values():
            if self.dtype in p.dtypes:
                return p.name, max(p.npu_cores)
        raise ConfigError(f"no platform runs {self.dtype!r}")

    def build_with(self, llm: Any, dataset: Any, **options: Any) -> None:
        """``llm.build`` for this row (its dtype, algorithm, level, activation mode, and the
        first platform that runs the dtype); ``options`` are further build arguments."""
        platform, cores = self.platform()
        llm.build(
            optimization_level=self.optimization_level,
            quantized_dtype=self.dtype,
            quantized_algorithm=self.algorithm,
            target_platform=platform,
            num_npu_core=cores,
            dataset=dataset,
            activation_mode=self.activation_mode,
            **options,
        )


@dataclass
class TableRow:
    config: QuantConfig
    result: PerplexityResult | None
    note: str = ""
    seconds: float = 0.0


def with_activation_mode(static_build: Any, activation_mode: str) -> Any:
    """A copy of a static-activation build whose quantized layers use ``activation_mode``:
    the weights do not depend on the activation mode, so they are not built again."""
    import copy

    from .quant.qlinear import QuantLinear

    model = copy.deepcopy(static_build)
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.act_mode == "static":
            module.use_dynamic_activations(activation_mode)
    return model


def perplexity_table(
    llm: Any,
    configs: list[QuantConfig],
    ids: Any,
    dataset: list[dict[str, str]] | None,
    max_windows: int | None = None,
    on_row: Any = None,
) -> list[TableRow]:
    """Build every config with ``llm`` (an :class:`~.api.RKLLM` holding a loaded model) and
    measure perplexity on ``ids``.

    A dynamic-activation config reuses the weights of the same static build when one was
    made (the weights do not depend on the activation mode), switching only the mode.
    """
    import time

    rows: list[TableRow] = []
    static_builds: dict[tuple[str, str, int], Any] = {}
    strict = llm.strict
    llm.strict = True
    try:
        for cfg in configs:
            start = time.perf_counter()
            if cfg.dtype is None:
                model = llm._model
            else:
                key = (cfg.dtype, cfg.algorithm, cfg.optimization_level)
                if cfg.activation_mode != "static" and key in static_builds:
                    model = with_activation_mode(static_builds[key], cfg.activation_mode)
                else:
                    try:
                        cfg.build_with(llm, dataset)
                    except Exception as exc:  # a config this model cannot take: say why
                        rows.append(TableRow(cfg, None, str(exc)))
                        if on_row is not None:
                            on_row(rows[-1])
                        continue
                    model = llm.model
                    if cfg.activation_mode == "static":
                        static_builds[key] = model
            res = perplexity(model, ids, max_windows=max_windows, desc=cfg.label)
            rows.append(TableRow(cfg, res, seconds=time.perf_counter() - start))
            if on_row is not None:
                on_row(rows[-1])
    finally:
        llm.strict = strict
    return rows


def format_table(rows: list[TableRow]) -> str:
    """Markdown table: config, perplexity, change vs float."""
    base = next((r.result.perplexity for r in rows if r.config.dtype is None and r.result), None)
    lines = [
        "| config | act | opt | PPL | vs float | time s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.config
        act = "-" if c.dtype is None or "a16" in c.dtype else c.activation_mode
        opt = "-" if c.dtype is None else ("yes" if c.optimization_level else "no")
        name = "float" if c.dtype is None else f"{c.dtype} ({c.algorithm})"
        if r.result is None:
            lines.append(f"| {name} | {act} | {opt} | n/a | {r.note[:90]} | |")
            continue
        ppl = r.result.perplexity
        rel = f"{(ppl / base - 1) * 100:+.2f}%" if base else ""
        lines.append(f"| {name} | {act} | {opt} | {ppl:.3f} | {rel} | {r.seconds:.0f} |")
    return "\n".join(lines)
