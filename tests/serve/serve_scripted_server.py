"""``python serve_scripted_server.py --port 0 …``: a real server process on a scripted engine.

Used by the router, shutdown and benchmark runs, where servers must be separate processes
(to be killed or signalled). Prints ``rkllm serve: listening on http://host:port`` when bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_scripted import ScriptedEngine, scripted_model

from rkllm_core import RuntimeConfig
from rkllm_core.serve import ServeConfig, serve


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--api-key")
    parser.add_argument("--log", type=Path, help="append finished answers here")
    args = parser.parse_args()
    engine = ScriptedEngine(token_delay=args.token_delay, log_path=args.log)
    model = scripted_model(engine, RuntimeConfig(max_new_tokens=512))
    config = ServeConfig(port=args.port, max_queue=args.max_queue, grace_s=args.grace,
                         api_key=args.api_key, served_names=("scripted",))
    return serve(model, config, close_model=True, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
