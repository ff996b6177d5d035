"""``rkllm doctor``: what each engine would find on this machine, and which one a model uses.

Both paths are reported: the NPU engine (runtime library, ABI family, driver, CPU) and the PC
engine (torch, transformers). For a model (a path or a demo name such as ``smollm2``) it says
which engine this machine would run it on and why, and checks the file with that engine's
reader. The exit status is 1 only when the path that would be used cannot work.

Nothing here loads the runtime library or the model (or downloads one): it reads files only,
so the command is safe on a board where loading would crash (SIGILL, wrong driver) and on any
PC.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

from ..config import RuntimeConfig
from ..errors import RKLLMError
from .abi import SPECS
from .checks import (
    Check,
    board_platform,
    check_model_file,
    cpu_features,
    driver_unknown_reason,
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
    rows.append(("npu driver", "ok" if drv else "info", drv or driver_unknown_reason()))

    model_path, model_rows = _resolve(model)
    uses_npu = model_path is not None and model_path.suffix.lower() == ".rkllm"
    pc_ok, pc_detail = pc_engine_status()
    # Without a model, the NPU path matters only where the PC engine cannot run.
    npu_needed = uses_npu or (model_path is None and not pc_ok)
    sdk: str | None = None
    npu_ok = False
    try:
        path = find_library(library)
    except RKLLMError:
        searched = ", ".join(str(p) for p in candidate_paths(library))
        rows.append(("library", "fail" if npu_needed else "info",
                     f"not found; searched {searched}"))
        rows.append(("hint", "info", f"set {ENV_LIBRARY}=/path/to/librkllmrt.so on a board; on a"
                     " PC use the PC engine (backend='pc')"))
        path = None
    if path is not None:
        rows.append(("library", "ok", str(path)))
        try:
            ident = identify(path, family)
            sdk = ident.sdk_version
            rows.append(("runtime version", "ok" if sdk else "warn", sdk or "no version text"))
            layout = f", layout {ident.layout}" if ident.layout != ident.family else ""
            rows.append(("abi family", "ok", f"{ident.family}{layout} ({ident.reason})"))
            spec = SPECS[ident.family]
            missing = sorted(spec.symbols - ident.symbols)
            rows.append(("symbols", "fail" if missing else "ok",
                         f"{len(ident.symbols)} rkllm_* exported"
                         + (f"; missing {', '.join(missing)}" if missing else "")))
            for w in ident.warnings:
                rows.append(("family override", "warn", w))
            npu_ok = not missing
        except RKLLMError as exc:
            rows.append(("abi family", "fail" if npu_needed else "warn", str(exc)))
    for chk in system_checks(sdk):
        if chk.name != "npu driver":  # already shown above
            rows.append(_row(chk))
    env = {k: os.environ[k] for k in (ENV_LIBRARY, ENV_FAMILY) if k in os.environ}
    if env:
        rows.append(("environment", "info", ", ".join(f"{k}={v}" for k, v in env.items())))

    rows.append(("npu engine", "ok" if npu_ok else "info",
                 "can run .rkllm files here" if npu_ok else "cannot run here (see above)"))
    rows.append(("pc engine", "ok" if pc_ok else ("fail" if model_path is not None and not
                                                  uses_npu else "info"), pc_detail))
    rows.append(("uses", "info", _choice(model, model_path, uses_npu, npu_ok, pc_ok)))
    rows += model_rows
    if model_path is not None:
        if uses_npu:
            rows += _model_rows(str(model_path), sdk, max_context_len)
        else:
            rows += _pc_model_rows(model_path)
    return rows


def pc_engine_status() -> tuple[bool, str]:
    """Whether the PC engine's packages are installed (found, not imported: that is slow)."""
    missing = [name for name in ("torch", "transformers")
               if importlib.util.find_spec(name) is None]
    if missing:
        return False, (f"{', '.join(missing)} not installed: pip install 'rkllm-py[pc]' to run"
                       f" GGUF, Hugging Face and toolkit models on the CPU")
    versions = ", ".join(f"{name} {_version(name)}" for name in ("torch", "transformers"))
    return True, f"can run GGUF, Hugging Face and toolkit models here ({versions})"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _resolve(model: str | None) -> tuple[Path | None, list[Row]]:
    """The model's path: a file or directory, or a demo name's cached copy (never fetched)."""
    if not model:
        return None, []
    path = Path(model).expanduser()
    if path.exists():
        return path, []
    from ..cache import cache_dir
    from ..demo_models import KNOWN_MODELS

    spec = KNOWN_MODELS.get(model.lower())
    if spec is None:
        if path.suffix.lower() == ".rkllm":
            return path, []  # the NPU model checks report it missing
        return None, [("model", "fail", f"{model} does not exist (demo names:"
                       f" {', '.join(sorted(KNOWN_MODELS))})")]
    cached = cache_dir() / spec.name / spec.filename
    if not cached.is_file():
        return None, [("model", "warn", f"demo model {spec.name} is not fetched yet; run"
                       f" `rkllm pull {spec.name}` (it would be {cached})")]
    return cached, [("demo model", "info", f"{spec.name}: {cached}")]


def _choice(model: str | None, path: Path | None, uses_npu: bool, npu_ok: bool,
            pc_ok: bool) -> str:
    if path is None:
        if model:
            return "no engine: the model is not available (see below)"
        return ("the NPU engine for .rkllm files, the PC engine for everything else"
                + ("" if npu_ok else "; the NPU engine cannot run here")
                + ("" if pc_ok else "; the PC engine is not installed"))
    if uses_npu:
        why = f"{path.name} is an NPU model (.rkllm), which only the NPU engine runs"
        return f"npu engine: {why}" + ("" if npu_ok else " (it cannot run here: see above)")
    why = f"{path.name} is not a .rkllm file; the NPU runtime loads only .rkllm"
    return f"pc engine: {why}" + ("" if pc_ok else " (not installed: see above)")


def _pc_model_rows(path: Path) -> list[Row]:
    from ..model_info import describe_model

    try:
        facts = describe_model(path)
    except RKLLMError as exc:
        return [("model", "fail", str(exc))]
    rows: list[Row] = [("model", "ok", f"{path} ({facts.get('format')}, {facts['size_mb']} MiB)")]
    for key in ("architecture", "quantization", "context_length", "hidden_size", "layers",
                "vocab_size", "tokenizer", "chat_template"):
        if key in facts:
            value = facts[key]
            rows.append((f"  {key.replace('_', ' ')}", "info" if value is not None else "warn",
                         str(value) if value is not None else "not in the file"))
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
        "doctor", help="check both engines (NPU runtime, driver, CPU; torch) and a model: which"
        " engine it would use and why (loads nothing)")
    p.add_argument("model", nargs="?",
                   help=".rkllm file, GGUF file, model directory or demo name (smollm2)")
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
