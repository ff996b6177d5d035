"""Perplexity under the toolkit's quantizations: in-domain and on held-out text, per calibration.

Run: ``python benchmarks/quant_ppl.py [--model smollm2 qwen2.5-coder-0.5b|PATH ...] [--windows 16]``
(both demo models by default, one after the other: each prints its own tables)

Texts (Rockchip's recipe: tokenized once, non-overlapping 512-token windows, mean next-token
cross-entropy, exponentiated):

- in-domain: the Python tutorial of Debian's python3-doc package (``apt-get install
  python3-doc``), markup stripped, the first ``--windows`` windows;
- held-out: text from another domain that no calibration below has seen and that nothing in
  rkllm-py was tuned on. Default ``gpl-3``: the GNU GPL version 3 as Debian ships it
  (``/usr/share/common-licenses/GPL-3``, on every Debian system), legal English, about 7,600
  tokens (14 windows for SmolLM2's tokenizer); ``debian-faq``: the Debian FAQ
  (``apt-get install debian-faq``).

Calibrations (``--calibrations``), each a column of both tables:

- ``builtin``: ``dataset=None``, the default: rkllm-py's built-in calibration text;
- ``generated``: ``dataset=None, calibration_source="generated"`` (the model writes its own);
- ``builtin+generated``;
- ``howto``: a user dataset, ``--calib-samples`` 512-token pieces of the python3-doc HOWTOs:
  the in-domain table's own domain, and another domain for the held-out table.

Optimisation (``:opt`` rows, ``optimization_level=1``): GPTQ in act-order with static group
scales; for w8a8 also SmoothQuant with the strength and activation clip searched, then a static
clip search per layer after GPTQ. ``per_token`` reuses the static build's weights with one
activation scale per token (a bound: the runtime's documented scale is per tensor).
Builds that need no calibration (float, round-to-nearest ``w4a16``) are made once and shown in
every column.

Targets: w8a8 with optimisation within +2% of float (issue 6, in-domain), within +5% on the
held-out text with ``dataset=None`` (issue 16); grouped w4a16 with optimisation recovering at
least 50% of round-to-nearest's loss in mean NLL with ``dataset=None`` on held-out text (g32 and
g64 on SmolLM2, whose hidden size 576 rules out g128; g128 on Qwen2.5-Coder-0.5B).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rkllm_core.toolkit import RKLLM
from rkllm_core.toolkit.evaluate import (
    QuantConfig,
    calibration_samples,
    load_corpus,
    perplexity,
    tokenize_corpus,
    with_activation_mode,
)

CONFIGS = [
    "float",
    "w8a8:normal:opt",
    "w8a8:normal:per_token:opt",
    "w4a16_g64:normal",
    "w4a16_g64:normal:opt",
    "w4a16_g32:normal",
    "w4a16_g32:normal:opt",
    "w4a16_g128:normal",
    "w4a16_g128:normal:opt",
]
CALIBRATIONS = ["builtin", "generated", "builtin+generated", "howto"]
HELDOUT = {
    "gpl-3": "/usr/share/common-licenses/GPL-3",
    "debian-faq": "/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz",
}


def resolve_model(name: str) -> Path:
    p = Path(name).expanduser()
    if p.exists():
        return p
    from rkllm_core.demo_models import fetch_model

    return fetch_model(name)


def heldout_text(name: str) -> str:
    path = Path(HELDOUT[name])
    if not path.is_file():
        raise SystemExit(f"held-out text {name!r} needs {path} (apt-get install {name})")
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


def needs_calibration(cfg: QuantConfig) -> bool:
    if cfg.dtype is None:
        return False
    return cfg.optimization_level > 0 or ("a8" in cfg.dtype and cfg.activation_mode == "static")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        nargs="+",
        default=["smollm2", "qwen2.5-coder-0.5b"],
        help="demo names, .gguf files or HF directories",
    )
    ap.add_argument("--windows", type=int, default=16, help="in-domain 512-token windows")
    ap.add_argument("--heldout", default="gpl-3", choices=list(HELDOUT))
    ap.add_argument("--heldout-windows", type=int, default=14)
    ap.add_argument("--calib-samples", type=int, default=16, help="howto: 512-token pieces")
    ap.add_argument("--calibrations", nargs="*", default=CALIBRATIONS, choices=CALIBRATIONS)
    ap.add_argument("--budget", type=float, default=600, help="generation budget (s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=CONFIGS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rkllm_core.toolkit.api").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    for name in args.model:
        run_model(name, args)
    return 0


def run_model(name: str, args: argparse.Namespace) -> None:
    """Both tables (in-domain and held-out) of one model, every calibration a column."""
    t0 = time.perf_counter()
    path = resolve_model(name)
    llm = RKLLM(strict=True)
    if path.suffix == ".gguf":
        llm.load_gguf(str(path))
    else:
        llm.load_huggingface(str(path))
    tok = llm.tokenizer
    texts = {
        "in-domain": (tokenize_corpus(tok, load_corpus("python-docs")), args.windows),
        "held-out": (tokenize_corpus(tok, heldout_text(args.heldout)), args.heldout_windows),
    }
    howto = calibration_samples(
        tok, load_corpus("python-docs-howto"), args.calib_samples, 512
    )  # fmt: skip
    configs = [QuantConfig.parse(c) for c in args.configs]

    # results[text][calibration][config label] = perplexity (or a note)
    results: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in texts}
    described: dict[str, str] = {}

    def measure(model: Any, calib: str, label: str) -> None:
        for name, (ids, windows) in texts.items():
            r = perplexity(model, ids, max_windows=windows, desc=f"{label} {name}")
            results[name].setdefault(calib, {})[label] = r.perplexity
        ppl = ", ".join(f"{t} {results[t][calib][label]:.3f}" for t in texts)
        print(f"  [{calib}] {label}: {ppl}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    shared = [c for c in configs if not needs_calibration(c)]
    for cfg in shared:
        model = build(llm, cfg, None, {})
        if isinstance(model, str):
            for t in texts:
                results[t].setdefault("*", {})[cfg.label] = model
            print(f"  {cfg.label}: n/a ({model[:100]})", flush=True)
            continue
        measure(model, "*", cfg.label)

    for calib in args.calibrations:
        dataset = howto if calib == "howto" else None
        kwargs = {} if calib == "howto" else {"calibration_source": calib}
        kwargs["calibration_budget_s"] = args.budget
        static: dict[str, Any] = {}
        for cfg in configs:
            if not needs_calibration(cfg):
                continue
            key = f"{cfg.dtype}:{cfg.algorithm}:{cfg.optimization_level}"
            if cfg.activation_mode != "static" and key in static:
                model = with_activation_mode(static[key], cfg.activation_mode)
            else:
                model = build(llm, cfg, dataset, kwargs)
                if isinstance(model, str):
                    for t in texts:
                        results[t].setdefault(calib, {})[cfg.label] = model
                    print(f"  [{calib}] {cfg.label}: n/a ({model[:100]})", flush=True)
                    continue
                described.setdefault(calib, llm.manifest["calibration"]["description"])
                if cfg.activation_mode == "static":
                    static[key] = model
            measure(model, calib, cfg.label)

    print(f"\nmodel: {path.name}; threads {args.threads}")
    print(
        f"in-domain: python3-doc tutorial, {args.windows} x 512-token windows; held-out:"
        f" {args.heldout} ({HELDOUT[args.heldout]}), {args.heldout_windows} x 512-token windows"
    )
    for calib, line in described.items():
        print(f"  {calib}: calibrated on {line}")
    for name in texts:
        print(f"\n{name}\n")
        print(format_grid(results[name], configs, args.calibrations))
        print()
        for line in target_lines(results[name], args.calibrations):
            print(line)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s\n", flush=True)


def build(llm: RKLLM, cfg: QuantConfig, dataset: Any, kwargs: dict[str, Any]) -> Any:
    """The model of ``cfg`` (the float model for ``float``), or why this model cannot take it."""
    if cfg.dtype is None:
        return llm._model
    try:
        cfg.build_with(llm, dataset, **kwargs)
    except Exception as exc:  # e.g. a group size that does not divide this model's layers
        return str(exc)
    return llm.model


def _cell(ppl: Any, base: float | None) -> str:
    if ppl is None:
        return ""
    if isinstance(ppl, str):
        return "n/a"
    return f"{ppl:.3f} ({(ppl / base - 1) * 100:+.1f}%)" if base else f"{ppl:.3f}"


def format_grid(
    res: dict[str, dict[str, Any]], configs: list[QuantConfig], calibs: list[str]
) -> str:
    base = res.get("*", {}).get("float")
    lines = [
        "| config | " + " | ".join(calibs) + " |",
        "|---" * (len(calibs) + 1) + "|",
    ]
    for cfg in configs:
        if cfg.label in res.get("*", {}):
            ppl = res["*"][cfg.label]
            cells = [_cell(ppl, base)] * len(calibs)
        else:
            cells = [_cell(res.get(c, {}).get(cfg.label), base) for c in calibs]
        if all(c in ("", "n/a") for c in cells):
            continue  # a config this model cannot take (the group size does not divide it)
        lines.append(f"| {cfg.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recovered(base: float, rtn: float, opt: float) -> float:
    """Share of round-to-nearest's loss (in mean NLL, i.e. log PPL) that optimisation recovers."""
    gap = math.log(rtn) - math.log(base)
    return (math.log(rtn) - math.log(opt)) / gap if gap > 0 else float("nan")


def target_lines(res: dict[str, dict[str, Any]], calibs: list[str]) -> list[str]:
    shared = res.get("*", {})
    base = shared.get("float")
    if not isinstance(base, float):
        return []
    out = []
    for calib in calibs:
        mine = res.get(calib, {})
        w8 = mine.get("w8a8:normal:opt")
        if isinstance(w8, float):
            out.append(f"{calib}: w8a8 opt {(w8 / base - 1) * 100:+.2f}% over float")
        for g in ("g128", "g64", "g32"):
            rtn, opt = shared.get(f"w4a16_{g}:normal"), mine.get(f"w4a16_{g}:normal:opt")
            if isinstance(rtn, float) and isinstance(opt, float):
                out.append(
                    f"{calib}: w4a16_{g} opt recovers {recovered(base, rtn, opt) * 100:.0f}%"
                    f" of RTN's loss"
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
