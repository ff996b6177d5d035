"""Longer fuzz run of the GGUF / .rkllm readers, and the corrupt-count cases of issue 13.

    python benchmarks/fuzz_formats.py [--count 5000] [--seed 1] [--large-tokens 200000]

1. ``--count`` mutated GGUF and ``--count`` mutated .rkllm files (bit flips, truncations, huge
   counts and lengths, wrong value types, duplicate keys; seeded) through the readers,
   ``rkllm info``, the NPU pre-load checks and the PC pre-load check, in a worker whose address
   space is limited (``resource.setrlimit``): inputs, typed, clean, other, hangs, worker deaths,
   peak allocations (tracemalloc).
2. Files of a few MB (``--large-tokens`` vocabulary) with corrupted array counts: peak
   allocations against the file size.
3. ``rkllm info`` on the SmolLM2 demo GGUF (when cached) with its token count changed from
   49152 to 5,000,000, and on a 128 MiB .rkllm whose token count is corrupted: wall time and
   peak RSS of the process, against the same command on the unchanged file.

Figures vary with the machine's load; the counts (typed, other, hangs) do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from formats import writers as w  # noqa: E402
from formats.fuzzing import run_fuzz, run_large  # noqa: E402

# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss across exec.
_INFO = """
import json, sys, time
t0 = time.perf_counter()
from rkllm_core.cli import main
rc = main(["info", sys.argv[1]])
hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1]
print(json.dumps({"rc": rc, "secs": time.perf_counter() - t0, "maxrss_kb": int(hwm)}))
"""


def info_run(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _INFO, str(path)], capture_output=True,
                          text=True, env=env, timeout=600)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return out


def corrupt_count(src: Path, dst: Path, key: bytes, value: int) -> None:
    shutil.copyfile(src, dst)
    with dst.open("r+b") as f:
        head = f.read(8 << 20)
        at = head.index(key) + len(key) + 4 + 4  # value type, element type, then the count
        f.seek(at)
        old = struct.unpack("<Q", f.read(8))[0]
        f.seek(at)
        f.write(struct.pack("<Q", value))
    print(f"  {dst.name}: count at offset {at} changed from {old} to {value}")


def big_rkllm(path: Path, size: int) -> None:
    """A valid .rkllm padded to ``size`` bytes of tensor data, with the trailer at the end."""
    data = w.container(w.rkllm_entries(), [("blob", (size // 2,), 1, size)], masked=True,
                       trailer="1.3.1")
    path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="mutated files per kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--large-tokens", type=int, default=200_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rkllm-fuzz-"))
    try:
        t0 = time.monotonic()
        summary = run_fuzz(work / "small", args.count, args.seed)
        print(f"[1] {summary.line()} ({time.monotonic() - t0:.0f} s, address-space limit"
              f" {summary.as_limit >> 20} MiB)")
        for example in summary.examples[:10]:
            print(f"    {example}")
        print(f"[2] large files ({args.large_tokens} tokens):")
        for name, size, report in run_large(work / "large", n_tokens=args.large_tokens):
            if isinstance(report, str):
                print(f"    {name}: {report}")
                continue
            kinds = sorted(set(report["results"].values()))
            print(f"    {name}: {size / 2**20:.1f} MiB file, outcomes {kinds}, peak"
                  f" {report['peak'] / 2**20:.1f} MiB ({report['peak'] / size:.2f}x)")
        print("[3] rkllm info, whole process (time, peak RSS):")
        from rkllm_core.cache import cache_dir

        demo = cache_dir() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        cases: list[tuple[str, Path]] = []
        if demo.is_file():
            bad = work / "smollm2-bad-count.gguf"
            corrupt_count(demo, bad, b"tokenizer.ggml.tokens", 5_000_000)
            cases += [("demo GGUF, unchanged", demo), ("demo GGUF, token count 5,000,000", bad)]
        else:
            print("  (the SmolLM2 demo model is not cached: `rkllm pull smollm2`)")
        good = work / "big.rkllm"
        big_rkllm(good, 128 << 20)
        bad_rk = work / "big-bad-count.rkllm"
        corrupt_count(good, bad_rk, w.mask_bytes(b"tokenizer.ggml.tokens"), 5_000_000)
        bad_rk2 = work / "big-plausible-count.rkllm"
        remaining = (good.stat().st_size - 64) // 8
        corrupt_count(good, bad_rk2, w.mask_bytes(b"tokenizer.ggml.tokens"), remaining)
        cases += [("128 MiB .rkllm, unchanged", good),
                  ("128 MiB .rkllm, token count 5,000,000", bad_rk),
                  (f"128 MiB .rkllm, token count {remaining}", bad_rk2)]
        for label, path in cases:
            r = info_run(path)
            size = path.stat().st_size
            print(f"    {label}: exit {r['rc']}, {r['secs']:.2f} s, peak RSS"
                  f" {r['maxrss_kb'] / 1024:.0f} MiB (file {size / 2**20:.0f} MiB)"
                  + (f"; {r['stderr'][0][:150]}" if r["stderr"] else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
