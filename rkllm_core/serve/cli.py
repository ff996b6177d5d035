"""``rkllm serve MODEL``: the subcommand (imports the server stack only when it runs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``rkllm`` command."""
    parser = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server for one model (needs the [serve] extra)",
        description="Serve one model over the OpenAI API: /v1/chat/completions,"
        " /v1/completions, /v1/embeddings, /v1/models, /health, /ready.",
    )
    parser.add_argument("model", help="model file, directory or demo name (e.g. smollm2)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 to serve the LAN)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    parser.add_argument("--api-key", default=os.environ.get("RKLLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every path but /health"
                        " (default: $RKLLM_API_KEY)")
    parser.add_argument("--max-queue", type=int, default=16,
                        help="requests waiting behind the running one; more get 429")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds SIGTERM waits for running requests before aborting them")
    parser.add_argument("--request-timeout", type=float, default=None,
                        help="seconds a request may take, queue time included (504 past it)")
    parser.add_argument("--max-body-mb", type=float, default=16.0,
                        help="largest request body in MiB (413 past it)")
    parser.add_argument("--served-model-name", action="append", default=[],
                        help="name clients use for the model (repeatable; default: the MODEL"
                        " argument when it is a demo name, else the model's file name)")
    parser.add_argument("--embeddings", default="default",
                        choices=["default", "plain", "prompteol", "echo", "off"],
                        help="embedding strategy of /v1/embeddings (default: the model's own,"
                        " as in the frameworks); off disables the endpoint")
    parser.add_argument("--backend", choices=["auto", "npu", "pc"], default="auto")
    parser.add_argument("--max-context-len", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=512,
                        help="cap when a request sets no max_tokens")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=cmd_serve)


def served_names(model: str, explicit: list[str]) -> tuple[str, ...]:
    """Names the model answers to: the explicit ones, else a bare demo name as typed."""
    if explicit:
        return tuple(explicit)
    looks_like_path = os.sep in model or "/" in model or Path(model).exists()
    return () if looks_like_path else (model,)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model and serve it until SIGTERM."""
    try:
        from .runner import serve
    except ImportError as exc:
        print(f"error: rkllm serve needs the server extra ({exc.name} is missing):"
              " pip install 'rkllm-py[serve]'", file=sys.stderr)
        return 2
    from .. import RKLLMModel, RuntimeConfig
    from .config import ServeConfig

    config = ServeConfig(
        host=args.host, port=args.port, api_key=args.api_key or None,
        max_queue=args.max_queue, grace_s=args.grace, request_timeout_s=args.request_timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        served_names=served_names(args.model, args.served_model_name),
        embeddings=args.embeddings,
    )
    runtime = RuntimeConfig(max_context_len=args.max_context_len,
                            max_new_tokens=args.max_new_tokens)

    def load() -> RKLLMModel:
        return RKLLMModel(args.model, runtime, backend=args.backend)

    logging.getLogger("rkllm_core").setLevel(args.log_level.upper())
    return serve(load, config, log_level=args.log_level)
