"""Binding cost per streamed token: C callback -> NPUEngine -> queue sink -> Python iterator.

Runs against the fake runtime TEST FIXTURE (tests/npu/fixture/fake_rkllmrt.c, compiled here
with the system C compiler), one build per ABI family, so what is timed is the binding alone:
the fixture spends nanoseconds per token. Two figures per family:

* callback: how long the runtime's thread is held inside our callback per token (measured in
  C around the call) — the cost the NPU pays;
* latency: from the C callback's start to the token reaching the consumer's iterator on
  another thread (the token text carries the C timestamp; both sides use CLOCK_MONOTONIC).
  Tokens are spaced (--gap-us) as a real NPU spaces them, so the consumer is waiting when a
  token arrives; with no gap the figure would measure queue backlog, not the binding.

Target: under 50 us per token (0.2 % of a 25 ms NPU token at 40 tokens/s).
Usage: python benchmarks/npu_binding.py [--tokens 5000] [--gap-us 300]
"""

from __future__ import annotations

import argparse
import hashlib
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cffi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rkllm_core.config import RuntimeConfig, SamplingParams  # noqa: E402
from rkllm_core.engine import (  # noqa: E402
    ErrorEvent,
    Event,
    FinishEvent,
    PromptInput,
    Request,
    TokenEvent,
)
from rkllm_core.npu.engine import NPUEngine  # noqa: E402
from tests.npu.rkllm_writer import write_model  # noqa: E402

FIXTURE = REPO / "tests" / "npu" / "fixture" / "fake_rkllmrt.c"
FAMILIES = {"1.1": ("FAMILY_1_1", "1.1.4"), "1.2.0": ("FAMILY_1_2_0", "1.2.0"),
            "1.2.1": ("FAMILY_1_2_1", "1.2.3"), "1.3": ("FAMILY_1_3", "1.3.1")}


def build(define: str, version: str, out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        sys.exit("no C compiler: the benchmark needs one to build the fake runtime fixture")
    digest = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()[:10]
    out = out_dir / f"bench_{define}_{digest}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(FIXTURE), f"-D{define}",
                    f'-DSDK_VERSION="{version}"', "-lpthread"], check=True)
    return out


class QueueSink:
    """The simplest thread-safe sink: what a model layer's channel does."""

    def __init__(self) -> None:
        self.q: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def emit(self, event: Event) -> bool:
        self.q.put(event)
        return True

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            event = self.q.get()
            if isinstance(event, (FinishEvent, ErrorEvent)):
                return
            if isinstance(event, TokenEvent):
                yield event


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run_once(engine: NPUEngine, getters: object, ffi: cffi.FFI, count: int,
             gap_us: int) -> tuple[list[float], list[float], float]:
    """One timed run: (callback durations, C->iterator latencies, wall seconds)."""
    request = Request(PromptInput("bench"), SamplingParams().resolve(engine.config))
    script = ffi.new("char[]", f"T:{count}:{gap_us};F".encode())
    getters.fake_rkllm_script(script)  # type: ignore[attr-defined]
    sink = QueueSink()
    worker = threading.Thread(target=engine.run, args=(request, sink))
    latencies: list[float] = []
    t0 = time.perf_counter()
    worker.start()
    for event in sink:
        latencies.append((time.monotonic_ns() - int(event.text)) / 1000.0)
    wall = time.perf_counter() - t0
    worker.join()
    buf = ffi.new("long long[]", count)
    n = getters.fake_rkllm_callback_ns(buf, count)  # type: ignore[attr-defined]
    assert len(latencies) == count == n, (len(latencies), count, n)
    return [buf[i] / 1000.0 for i in range(n)], latencies, wall


def bench_family(lib: Path, model: Path, tokens: int, gap_us: int) -> dict[str, float]:
    ffi = cffi.FFI()
    ffi.cdef("void fake_rkllm_script(const char*); int fake_rkllm_callback_ns(long long*, int);")
    getters = ffi.dlopen(str(lib))
    engine = NPUEngine(str(model), RuntimeConfig(max_new_tokens=4 * tokens), library=str(lib))
    try:
        run_once(engine, getters, ffi, 500, 0)  # warm-up
        hot_cb, _, hot_wall = run_once(engine, getters, ffi, 4 * tokens, 0)
        cb, lat, _ = run_once(engine, getters, ffi, tokens, gap_us)
    finally:
        engine.close()
    return {
        "hot_cb_median": statistics.median(hot_cb), "hot_cb_p99": pct(hot_cb, 99),
        "hot_wall": hot_wall / (4 * tokens) * 1e6,
        "cb_median": statistics.median(cb), "cb_p99": pct(cb, 99),
        "lat_median": statistics.median(lat), "lat_p99": pct(lat, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--gap-us", type=int, default=300,
                        help="time between tokens in the fixture (a real NPU: ~25000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "bench.rkllm")
        try:
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        except OSError:
            load = "?"
        print(f"NPU binding cost per streamed token, in microseconds (python"
              f" {sys.version.split()[0]}, load average {load})")
        print(f"back to back: {4 * args.tokens} tokens with no gap | spaced: {args.tokens}"
              f" tokens {args.gap_us} us apart")
        print(f"{'family':7} | {'back-to-back callback':>21} {'wall/token':>10} |"
              f" {'spaced callback':>15} {'C->iterator latency':>19}")
        print(f"{'':7} | {'median':>10} {'p99':>10} {'':>10} | {'median':>7} {'p99':>7}"
              f" {'median':>9} {'p99':>9}")
        for family, (define, version) in FAMILIES.items():
            r = bench_family(build(define, version, Path(tmp)), model, args.tokens, args.gap_us)
            print(f"{family:7} | {r['hot_cb_median']:10.1f} {r['hot_cb_p99']:10.1f}"
                  f" {r['hot_wall']:10.1f} | {r['cb_median']:7.1f} {r['cb_p99']:7.1f}"
                  f" {r['lat_median']:9.1f} {r['lat_p99']:9.1f}")
        print("callback = time the runtime's thread spends in the binding (measured in C);"
              " wall/token = producer + consumer\nthroughput cost; latency = C callback start ->"
              " token out of the consumer's iterator on another thread. Target: < 50 us.")

if __name__ == "__main__":
    main()
