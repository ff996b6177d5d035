"""The ``rkllm`` command: chat, pull, info, bench, and the subcommands other modules add."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from .errors import RKLLMError

# modules that add their own subcommands through ``register(subparsers)``
COMMAND_MODULES = [
    "rkllm_core.npu.doctor",
    "rkllm_core.toolkit.cli",
    "rkllm_core.serve.cli",
]

PRESET_QUESTIONS = [
    "What is the capital of France?",
    "Explain what an NPU is in two sentences.",
    "Write a haiku about a river.",
    "Name three rivers in Europe.",
    "What is 17 times 3?",
]


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file, directory or demo name (e.g. smollm2)")
    parser.add_argument("--backend", choices=["auto", "npu", "pc"], default="auto")
    parser.add_argument("--max-context-len", type=int, default=2048)
    parser.add_argument("--max-new-tokens", type=int, default=256)


def _open_model(args: argparse.Namespace) -> Any:
    from .config import RuntimeConfig
    from .model import RKLLMModel

    config = RuntimeConfig(
        max_context_len=args.max_context_len, max_new_tokens=args.max_new_tokens
    )
    print(f"loading {args.model} …", file=sys.stderr, flush=True)
    return RKLLMModel(args.model, config, backend=args.backend)


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat with preset questions, multi-turn memory and /clear."""
    model = _open_model(args)
    try:
        print(f"model: {model.name} ({model.backend} engine)")
        print("preset questions (type the number):")
        for index, question in enumerate(PRESET_QUESTIONS):
            print(f"  [{index}] {question}")
        print("type 'exit' to leave, '/clear' to forget the conversation\n")
        while True:
            try:
                line = input("user: ").strip()
            except EOFError:
                print()
                break
            if not line:
                continue
            if line in ("exit", "quit", "/exit"):
                break
            if line == "/clear":
                model.clear_kv_cache()
                print("(conversation cleared)")
                continue
            if line.isdigit() and int(line) < len(PRESET_QUESTIONS):
                line = PRESET_QUESTIONS[int(line)]
                print(f"user: {line}")
            print("robot: ", end="", flush=True)
            stream = model.stream([{"role": "user", "content": line}], keep_history=True)
            try:
                for piece in stream:
                    print(piece.text, end="", flush=True)
            except KeyboardInterrupt:
                stream.abort()
                print("\n(interrupted)")
                continue
            result = stream.result
            print(
                f"\n[{result.usage.completion_tokens} tokens,"
                f" {result.perf.decode_tokens_per_s:.1f} tok/s]\n"
            )
    except KeyboardInterrupt:
        print("\nbye")
    finally:
        model.close()
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Fetch a demo model into the cache."""
    from .demo_models import KNOWN_MODELS, fetch_model

    names = list(KNOWN_MODELS) if args.name == "all" else [args.name]
    for name in names:
        path = fetch_model(name, force=args.force, verify=args.verify)
        print(f"{name}: {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a model without generating."""
    from .model_info import describe_model

    facts = describe_model(args.model)
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key.ljust(width)}  {value if value is not None else '-'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time to first token and decode speed on a fixed prompt."""
    model = _open_model(args)
    try:
        prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        model.generate(prompt, max_new_tokens=4, top_k=1)  # warm-up
        for run in range(args.runs):
            start = time.perf_counter()
            first = None
            stream = model.stream(prompt, max_new_tokens=args.max_new_tokens, top_k=1)
            for _ in stream:
                if first is None:
                    first = time.perf_counter() - start
            result = stream.result
            print(
                f"run {run + 1}: ttft {1000 * (first or 0):.0f} ms, prefill"
                f" {result.perf.prefill_tokens} tokens in {result.perf.prefill_ms:.0f} ms,"
                f" decode {result.perf.decode_tokens_per_s:.1f} tok/s"
                f" ({result.usage.completion_tokens} tokens)"
            )
    finally:
        model.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="rkllm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="interactive chat")
    _add_model_args(chat)
    chat.set_defaults(func=cmd_chat)

    pull = sub.add_parser("pull", help="fetch a demo model (smollm2, qwen2.5-coder-0.5b, all)")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="download again")
    pull.add_argument("--verify", action="store_true",
                      help="check the cached copy's sha256 (fetched again if it differs)")
    pull.set_defaults(func=cmd_pull)

    info = sub.add_parser("info", help="describe a model without loading it")
    info.add_argument("model")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="time to first token and decode speed")
    _add_model_args(bench)
    bench.add_argument("--runs", type=int, default=3)
    bench.set_defaults(func=cmd_bench, max_new_tokens=64)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            logging.getLogger(__name__).debug("subcommands of %s unavailable: %s", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rkllm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except RKLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
