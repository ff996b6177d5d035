"""``rkllm convert`` and ``rkllm eval``: the toolkit on the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .calibration import SOURCES
from .quant.formats import ACT_MODES

log = logging.getLogger(__name__)

DEFAULT_EVAL = [
    "float",
    "w8a8:normal",
    "w8a8:normal:opt",
    "w8a8:normal:dynamic",
    "w4a16_g32:normal",
    "w4a16_g32:normal:opt",
]


def register(subparsers: Any) -> None:
    """Add the ``convert`` and ``eval`` subcommands to an argparse subparsers object."""
    conv = subparsers.add_parser(
        "convert", help="quantize a Hugging Face directory or GGUF file for a Rockchip NPU"
    )
    conv.add_argument("model", help="Hugging Face directory, .gguf file or demo name (smollm2)")
    conv.add_argument(
        "-o", "--output", required=True, help="export path (NAME.rkllm-pc, or a new directory)"
    )
    conv.add_argument(
        "--format",
        default="rkllm-pc",
        choices=["rkllm-pc", "gptq"],
        help="rkllm-pc (default: the PC engine's export, or .rkllm via Rockchip's toolkit) or"
        " gptq (a Hugging Face GPTQ checkpoint that Rockchip's toolkit and GPTQ loaders read)",
    )
    conv.add_argument("--dtype", default="w8a8", help="quantized_dtype (default w8a8)")
    conv.add_argument("--platform", default="rk3588", help="target_platform (default rk3588)")
    conv.add_argument("--npu-cores", type=int, default=None, help="num_npu_core (default: all)")
    conv.add_argument("--algorithm", default="normal", help="quantized_algorithm")
    conv.add_argument("--optimization-level", type=int, default=1, choices=[0, 1])
    conv.add_argument(
        "--dataset",
        default=None,
        help='calibration JSON [{"input","target"}] (default: rkllm-py\'s built-in calibration'
        " text, see --calibration-source)",
    )
    conv.add_argument(
        "--calibration-source",
        default="builtin",
        choices=list(SOURCES),
        help="without --dataset: builtin (the package's calibration text), generated (text the"
        " model writes itself) or builtin+generated (default: %(default)s)",
    )
    conv.add_argument("--hybrid-rate", type=float, default=0.0)
    conv.add_argument("--max-context", type=int, default=4096)
    conv.add_argument("--activation-mode", default="static", choices=list(ACT_MODES))
    conv.add_argument("--lora", default=None, help="LoRA directory to merge (HF models)")
    conv.add_argument(
        "--qparams",
        default=None,
        help="reuse the quantization parameters of an earlier .rkllm-pc export of the same"
        " model (extra_qparams: no calibration; e.g. to write it again --format gptq)",
    )
    conv.add_argument("--no-quantization", action="store_true", help="export fp16 weights")
    conv.set_defaults(func=cmd_convert)

    ev = subparsers.add_parser(
        "eval", help="perplexity table over dtypes and algorithms (512-token windows)"
    )
    ev.add_argument("model", help="Hugging Face directory, .gguf file or demo name (smollm2)")
    ev.add_argument(
        "--configs",
        nargs="+",
        default=DEFAULT_EVAL,
        help="float or DTYPE[:ALGORITHM][:dynamic|:per_token][:opt] (default: %(default)s)",
    )
    ev.add_argument("--corpus", default="python-docs", help="python-docs or a text file")
    ev.add_argument("--windows", type=int, default=16, help="512-token windows scored")
    ev.add_argument("--calib-corpus", default="python-docs-howto")
    ev.add_argument("--calib-samples", type=int, default=8)
    ev.set_defaults(func=cmd_eval)


def _resolve(model: str) -> Path:
    p = Path(model).expanduser()
    if p.exists():
        return p
    if "/" not in model and "." not in model:
        from ..demo_models import fetch_model

        return fetch_model(model)
    raise ConfigError(f"model {model!r} does not exist")


def _load(model: str) -> Any:
    from .api import RKLLM

    path = _resolve(model)
    llm = RKLLM(strict=True)
    if path.is_file() and path.suffix.lower() == ".gguf":
        llm.load_gguf(str(path))
    else:
        llm.load_huggingface(str(path))
    return llm, path


def cmd_convert(args: argparse.Namespace) -> int:
    """Load, build and export; errors raise (the ``rkllm`` command prints them)."""
    from .api import RKLLM
    from .quant.formats import parse_platform

    path = _resolve(args.model)
    llm = RKLLM(strict=True)
    if path.is_file() and path.suffix.lower() == ".gguf":
        if args.lora:
            raise ConfigError("--lora applies to Hugging Face directories, not GGUF files")
        llm.load_gguf(str(path))
    else:
        llm.load_huggingface(str(path), model_lora=args.lora)
    cores = args.npu_cores or max(parse_platform(args.platform).npu_cores)
    llm.build(
        do_quantization=not args.no_quantization,
        optimization_level=args.optimization_level,
        quantized_dtype=args.dtype,
        quantized_algorithm=args.algorithm,
        target_platform=args.platform,
        num_npu_core=cores,
        extra_qparams=args.qparams,
        dataset=args.dataset,
        hybrid_rate=args.hybrid_rate,
        max_context=args.max_context,
        activation_mode=args.activation_mode,
        calibration_source=args.calibration_source,
    )
    # one line, so a conversion log shows what the model was calibrated on
    cal = llm.manifest.get("calibration", {})
    sys.stdout.write(f"calibrated on {cal.get('description', 'an earlier build (--qparams)')}\n")
    if args.format == "gptq":
        llm.export_gptq(args.output)
    else:
        llm.export_rkllm(args.output)
    sys.stdout.write(f"exported {args.output} ({args.format})\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Print a perplexity table (Markdown) over ``--configs``."""
    from .evaluate import (
        QuantConfig,
        calibration_samples,
        format_table,
        load_corpus,
        perplexity_table,
        tokenize_corpus,
    )

    configs = [QuantConfig.parse(c) for c in args.configs]
    llm, path = _load(args.model)
    ids = tokenize_corpus(llm.tokenizer, load_corpus(args.corpus))
    needs_calib = any(c.dtype for c in configs)
    calib = (
        calibration_samples(llm.tokenizer, load_corpus(args.calib_corpus), args.calib_samples, 512)
        if needs_calib
        else None
    )
    rows = perplexity_table(llm, configs, ids, calib, max_windows=args.windows)
    tokens = next((r.result.tokens for r in rows if r.result), 0)
    sys.stdout.write(
        f"{path.name}: {args.corpus}, {args.windows} x 512-token windows ({tokens} tokens)\n"
    )
    sys.stdout.write(format_table(rows) + "\n")
    return 0
