"""``rkllm doctor``: what the NPU engine would find on this machine, as a table.

Nothing here loads the runtime library or the model: it reads files only, so the command is
safe on a board where loading would crash (SIGILL, wrong driver) and on any PC.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

from ..config import RuntimeConfig
from ..errors import RKLLMError
from .abi import SPECS
from .checks import (
    DRIVER_VERSION_FILE,
    Check,
    board_platform,
    check_model_file,
    cpu_features,
    driver_version,
    model_checks,
    system_checks,
)
from .library import ENV_FAMILY, ENV_LIBRARY, candidate_paths, find_library, identify

Row = tuple[str, str, str]  # (item, status, detail)


def collect(
    library: str | None = None,
    family: str | None = None,
    model: str | None = None,
    max_context_len: int | None = None,
) -> list[Row]:
    """Every row of the report; never raises for what it inspects (errors become rows)."""
    rows: list[Row] = []
    rows.append(("machine", "info", f"{platform.machine()} {platform.system()}"
                 f" {platform.release()}"))
    rows.append(("board", "info", board_platform() or "not a Rockchip board (no device tree)"))
    feats = cpu_features()
    if feats is None:
        rows.append(("cpu features", "info", "unknown (/proc/cpuinfo not readable)"))
    else:
        shown = [f for f in ("asimd", "asimddp", "fphp", "i8mm", "sve", "sve2") if f in feats]
        rows.append(("cpu features", "info", " ".join(shown) or "none of asimd/dotprod/sve"))
    drv = driver_version()
    rows.append(("npu driver", "ok" if drv else "info",
                 drv or f"unknown ({DRIVER_VERSION_FILE} is readable by root only)"))

    sdk: str | None = None
    try:
        path = find_library(library)
    except RKLLMError:
        searched = ", ".join(str(p) for p in candidate_paths(library))
        rows.append(("library", "fail", f"not found; searched {searched}"))
        rows.append(("hint", "info", f"set {ENV_LIBRARY}=/path/to/librkllmrt.so on a board; on a"
                     " PC use the PC engine (backend='pc')"))
        path = None
    if path is not None:
        rows.append(("library", "ok", str(path)))
        try:
            ident = identify(path, family)
            sdk = ident.sdk_version
            rows.append(("runtime version", "ok" if sdk else "warn", sdk or "no version text"))
            rows.append(("abi family", "ok", f"{ident.family} ({ident.reason})"))
            spec = SPECS[ident.family]
            missing = sorted(spec.symbols - ident.symbols)
            rows.append(("symbols", "fail" if missing else "ok",
                         f"{len(ident.symbols)} rkllm_* exported"
                         + (f"; missing {', '.join(missing)}" if missing else "")))
            for w in ident.warnings:
                rows.append(("family override", "warn", w))
        except RKLLMError as exc:
            rows.append(("abi family", "fail", str(exc)))
    for chk in system_checks(sdk):
        if chk.name != "npu driver":  # already shown above
            rows.append(_row(chk))
    env = {k: os.environ[k] for k in (ENV_LIBRARY, ENV_FAMILY) if k in os.environ}
    if env:
        rows.append(("environment", "info", ", ".join(f"{k}={v}" for k, v in env.items())))

    if model:
        rows += _model_rows(model, sdk, max_context_len)
    return rows


def _row(chk: Check) -> Row:
    return (chk.name, chk.status, chk.detail)


def _model_rows(model: str, sdk: str | None, max_context_len: int | None) -> list[Row]:
    rows: list[Row] = []
    try:
        meta = check_model_file(model)
    except RKLLMError as exc:
        return [("model", "fail", str(exc))]
    rows.append(("model", "ok", f"{meta.path} ({meta.file_size / 2**20:.1f} MiB)"))
    desc: list[tuple[str, Any]] = [
        ("architecture", meta.architecture),
        ("toolkit version", meta.toolkit_version),
        ("target platform", meta.platform),
        ("max_context", meta.max_context),
        ("hidden size", meta.hidden_size),
        ("layers", meta.num_layers),
        ("vocab size", meta.vocab_size),
        ("tokenizer", meta.tokenizer_model),
        ("chat template", "jinja" if meta.chat_template else
         ("system/prefix/postfix" if meta.template_parts else None)),
    ]
    for name, value in desc:
        rows.append((f"  {name}", "info" if value is not None else "warn",
                     str(value) if value is not None else "not in the file"))
    try:
        cfg = RuntimeConfig(max_context_len=max_context_len or min(meta.max_context or 4096,
                                                                    4096))
        rows += [_row(c) for c in model_checks(meta, cfg, sdk, board=board_platform())]
    except RKLLMError as exc:
        rows.append(("model checks", "fail", str(exc)))
    return rows


def format_table(rows: list[Row]) -> str:
    """Rows as an aligned text table."""
    width = max(len(r[0]) for r in rows)
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "    "}
    return "\n".join(f"{item.ljust(width)}  {marks.get(status, status)}  {detail}"
                     for item, status, detail in rows)


def _cmd(args: argparse.Namespace) -> int:
    rows = collect(args.library, args.family, args.model, args.max_context_len)
    print(format_table(rows))
    return 1 if any(status == "fail" for _, status, _ in rows) else 0


def register(subparsers: Any) -> None:
    """Add ``doctor`` to the ``rkllm`` command's subparsers."""
    p = subparsers.add_parser(
        "doctor", help="check the NPU runtime, driver, CPU and a model file (loads nothing)")
    p.add_argument("model", nargs="?", help=".rkllm file to check")
    p.add_argument("--library", help=f"path of librkllmrt.so (default: ${ENV_LIBRARY}, system)")
    p.add_argument("--family", help=f"force the ABI family (default: ${ENV_FAMILY}, detected)")
    p.add_argument("--max-context-len", type=int, default=None,
                   help="check this max_context_len against the model")
    p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    """``python -m rkllm_core.npu.doctor``."""
    parser = argparse.ArgumentParser(prog="rkllm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *(argv or [])] if argv is not None else None)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main(sys.argv[1:]))
