"""``rkllm serve`` under load: one server, then three behind LiteLLM's Router; server overhead.

Everything runs on loopback and stops by itself. Two parts, in one run:

1. **Server overhead per streamed token**: the same answer streamed directly from
   ``RKLLMModel.astream`` and through the server (SSE, parsed by a light httpx client), on a
   scripted engine that costs nothing per token, so the difference is the server's own cost
   (HTTP, JSON, SSE, the hop between threads). Interleaved rounds, medians.
2. **Throughput and latency under a bounded load** (N concurrent clients, M requests): one
   server (direct, then behind the Router), then three servers behind the Router. Printed:
   requests/s, time to first token p50/p99, total latency p50/p99, errors, 429s (answered by
   the servers; the Router retries them elsewhere).

   ``--engine scripted`` (default) serves a **scripted engine with a fixed delay per token**
   (``--token-ms``, 20 ms ≈ a 1.5B model on an RK3588 NPU): each server process is then as
   fast as a board would be regardless of this machine's cores, so the figures measure the
   server and the Router themselves. ``--engine demo`` serves the real demo model (SmolLM2 on
   the PC engine): three CPU-bound servers on a machine with fewer cores than servers share
   those cores, so that row measures the machine, not the scaling (see the README).

    .venv/bin/python benchmarks/serve.py [--clients 8] [--requests 60] [--tokens 24]
                                         [--token-ms 20] [--engine scripted|demo]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SCRIPTED = REPO / "tests" / "serve"
sys.path.insert(0, str(SCRIPTED))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from serve_scripted import ServerProcess  # noqa: E402  (the scripted engine's test helpers)

# --- server processes -----------------------------------------------------------------------


def start_servers(count: int, args: argparse.Namespace) -> list[ServerProcess]:
    """``count`` servers of the chosen engine, started one after the other."""
    if args.engine == "scripted":
        command = [sys.executable, str(SCRIPTED / "serve_scripted_server.py"), "--port", "0",
                   "--token-delay", str(args.token_ms / 1000), "--max-queue", str(args.max_queue)]
        timeout = 30.0
    else:
        command = [sys.executable, "-m", "rkllm_core.cli", "serve", "smollm2", "--port", "0",
                   "--max-queue", str(args.max_queue), "--max-context-len", "1024",
                   "--log-level", "warning", "--served-model-name", "scripted"]
        timeout = 600.0
    return [ServerProcess(command=command, ready_timeout=timeout) for _ in range(count)]


# --- load ---------------------------------------------------------------------------------


@dataclass
class Run:
    """What one load run measured."""

    label: str
    wall_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: int = 0
    rejected: int = 0

    def row(self) -> str:
        done = len(self.latency)

        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}"

        return (f"{self.label:<28} {done / self.wall_s:7.2f} {pct(self.ttft, 0.5):>8}"
                f" {pct(self.ttft, 0.99):>8} {pct(self.latency, 0.5):>8}"
                f" {pct(self.latency, 0.99):>8} {self.errors:>6} {self.rejected:>5}")


HEADER = (f"{'setup':<28} {'req/s':>7} {'ttft50':>8} {'ttft99':>8} {'lat50':>8} {'lat99':>8}"
          f" {'errors':>6} {'429s':>5}   (ms)")


def prompt(i: int, args: argparse.Namespace) -> list[dict]:
    if args.engine == "scripted":
        text = f"count to {args.tokens}"  # the scripted engine answers with that many tokens
    else:
        text = f"Tell me one fact about the number {i}."
    return [{"role": "user", "content": text}]


async def drive(label: str, send_one, args: argparse.Namespace) -> Run:  # type: ignore[no-untyped-def]
    """M requests from N concurrent clients; each records TTFT and latency, or an error."""
    run = Run(label)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            try:
                first = await send_one(i)
            except Exception as exc:  # counted, not fatal: the row shows it
                run.errors += 1
                if args.verbose:
                    print(f"  error: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            run.ttft.append(first - start)
            run.latency.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(args.clients)])
    run.wall_s = time.perf_counter() - start
    return run


def direct_sender(server: ServerProcess, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import openai

    api = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                             timeout=600)

    async def send(i: int) -> float:
        stream = await api.chat.completions.create(
            model="scripted", messages=prompt(i, args), stream=True,
            max_tokens=args.tokens, extra_body={"top_k": 1})
        first = 0.0
        async for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        return first

    return send


def router_sender(servers: list[ServerProcess], args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import litellm

    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[{"model_name": "rkllm", "litellm_params": {
            "model": "openai/scripted", "api_base": s.base_url, "api_key": "unused",
            "timeout": 600, "max_retries": 0}} for s in servers],
        routing_strategy="least-busy", num_retries=3, retry_after=0,
    )

    async def send(i: int) -> float:
        stream = await router.acompletion(model="rkllm", messages=prompt(i, args), stream=True,
                                          max_tokens=args.tokens, top_k=1)
        first = 0.0
        async for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        return first

    return send


async def load_runs(args: argparse.Namespace) -> list[Run]:
    runs = []
    servers = start_servers(3, args)
    try:
        one = servers[:1]
        for label, send, group in [
            ("1 server, direct", direct_sender(one[0], args), one),
            ("1 server, Router", router_sender(one, args), one),
            ("3 servers, Router", router_sender(servers, args), servers),
        ]:
            await drive("warm-up", send, argparse.Namespace(**{**vars(args), "requests": 3,
                                                                "clients": 3}))
            before = sum(s.rejected() for s in group)
            run = await drive(label, send, args)
            run.rejected = sum(s.rejected() for s in group) - before
            print(run.row(), flush=True)
            runs.append(run)
    finally:
        for server in servers:
            server.terminate()
    return runs


# --- overhead per token -------------------------------------------------------------------


async def overhead(args: argparse.Namespace) -> tuple[float, float]:
    """(direct ms/token, server ms/token) on a zero-cost scripted engine, medians of rounds."""
    from serve_scripted import ScriptedEngine, scripted_model

    from rkllm_core import RuntimeConfig

    n = args.overhead_tokens
    messages = [{"role": "user", "content": f"count to {n}"}]
    model = scripted_model(ScriptedEngine(), RuntimeConfig(max_new_tokens=n + 10))
    server = ServerProcess()
    direct, served = [], []
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            for _ in range(args.rounds + 1):  # the first round warms both paths up
                start = time.perf_counter()
                count = 0
                async for piece in model.astream(messages, max_new_tokens=n + 10):
                    count += bool(piece.text)
                direct.append((time.perf_counter() - start) / count)
                start = time.perf_counter()
                count = 0
                body = {"model": "scripted", "messages": messages, "stream": True,
                        "max_tokens": n + 10}
                async with http.stream("POST", server.base_url + "/chat/completions",
                                       json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            delta = json.loads(line[6:])["choices"][0]["delta"]
                            count += bool(delta.get("content"))
                served.append((time.perf_counter() - start) / count)
    finally:
        model.close()
        server.terminate()
    return 1000 * statistics.median(direct[1:]), 1000 * statistics.median(served[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["scripted", "demo"], default="scripted")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (N)")
    parser.add_argument("--requests", type=int, default=60, help="requests per run (M)")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--token-ms", type=float, default=20.0,
                        help="scripted engine: milliseconds per token")
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--overhead-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_overhead:
        direct, served = asyncio.run(overhead(args))
        print(f"\nper streamed token, zero-cost scripted engine, {args.overhead_tokens} tokens,"
              f" median of {args.rounds} rounds:")
        print(f"  direct RKLLMModel.astream  {direct:.3f} ms/token")
        print(f"  through rkllm serve (SSE)  {served:.3f} ms/token")
        print(f"  server overhead            {served - direct:.3f} ms/token (target < 0.5)")
    engine = (f"scripted engine, fixed {args.token_ms:.0f} ms/token" if args.engine == "scripted"
              else "demo model SmolLM2-135M on the PC engine")
    print(f"\nload: {args.clients} clients, {args.requests} requests, {args.tokens} tokens each,"
          f" {engine}")
    print(HEADER)
    runs = asyncio.run(load_runs(args))
    single, routed = runs[0], runs[2]
    speedup = (len(routed.latency) / routed.wall_s) / (len(single.latency) / single.wall_s)
    print(f"\n3 servers behind the Router / 1 server direct: {speedup:.2f}x requests/s"
          f" (target >= 2.5); lost requests: {sum(r.errors for r in runs)}")


if __name__ == "__main__":
    main()
