"""Seeded mutation fuzzing of the GGUF / .rkllm readers, run in a memory-limited subprocess.

Used by the bounded test in this directory and by ``benchmarks/fuzz_formats.py`` (longer
runs). Inputs are mutations of the valid files :mod:`.writers` makes: bit flips, truncations,
huge counts and lengths, wrong value types and duplicate keys. Each input goes through every
reader a user reaches (the readers, ``rkllm info``, the NPU pre-load checks and tokenizer, the
PC engine's pre-load check) inside a worker process whose address space is limited with
``resource.setrlimit``; the worker reports, per input, each driver's outcome (no error, a
typed error, or anything else), the peak of Python allocations (tracemalloc) and the time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import select
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import writers as w

REPO = Path(__file__).resolve().parents[2]
HUGE = (2**31, 2**32 + 5, 5_000_000, 2**40, 2**62, 2**63, 2**64 - 1)
STRATEGIES = ("bitflip", "truncate", "huge", "vtype", "duplicate", "retype", "mixed")


# --- the structure of a valid file, for targeted mutations ------------------------------------


@dataclass
class FieldMap:
    """Offsets of the fields of a valid container (walked independently of the reader)."""

    lengths: list[int] = field(default_factory=list)  # u64 string lengths / array counts
    vtypes: list[int] = field(default_factory=list)  # u32 value / element / tensor types
    dims: list[int] = field(default_factory=list)  # u32 n_dims and u64 dims / offsets
    header_end: int = 0


def field_map(data: bytes) -> FieldMap:
    m = FieldMap()
    pos = 4 + 4
    n_tensors, n_kv = struct.unpack_from("<QQ", data, pos)
    m.lengths += [pos, pos + 8]
    pos += 16

    def string() -> None:
        nonlocal pos
        m.lengths.append(pos)
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    def value(vtype: int) -> None:
        nonlocal pos
        if vtype == w.STRING:
            string()
        elif vtype == w.ARRAY:
            m.vtypes.append(pos)
            etype, count = struct.unpack_from("<IQ", data, pos)
            m.lengths.append(pos + 4)
            pos += 12
            for _ in range(count):
                value(etype)
        else:
            pos += struct.calcsize(w.FMT[vtype])

    for _ in range(n_kv):
        string()
        m.vtypes.append(pos)
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        value(vtype)
    for _ in range(n_tensors):
        string()
        m.dims.append(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        m.dims += [pos + 8 * i for i in range(n_dims)]
        pos += 8 * n_dims
        m.vtypes.append(pos)
        m.dims.append(pos + 4)  # the data offset
        pos += 12
    m.header_end = pos
    return m


# --- mutations ---------------------------------------------------------------------------------


def _retyped_entries(entries: list[w.Entry], rng: random.Random) -> list[w.Entry]:
    """One entry's value replaced by a value of another type (valid encoding, wrong meaning)."""
    out = list(entries)
    i = rng.randrange(len(out))
    key = out[i][0]
    choices: list[tuple[int, Any]] = [
        (w.STRING, "x" * rng.randrange(0, 40)), (w.U32, rng.randrange(2**32)),
        (w.I64, -rng.randrange(2**62)), (w.F32, rng.choice([0.5, -1.0, float("inf")])),
        (w.F64, float("nan")), (w.BOOL, True), (w.U8, 255),
        (w.ARRAY, (w.I32, [rng.randrange(-5, 5) for _ in range(rng.randrange(0, 8))])),
        (w.ARRAY, (w.STRING, ["a", "bb"])), (w.ARRAY, (w.F32, [1.0, 2.0])),
        (w.ARRAY, (w.BOOL, [True, False])), (w.ARRAY, (w.U8, [])),
    ]
    vtype, value = rng.choice(choices)
    out[i] = (key, vtype, value)
    return out


def make_input(kind: str, strategy: str, rng: random.Random) -> bytes:
    """One mutated file of ``kind`` ("gguf" or "rkllm")."""
    masked = kind == "rkllm"
    entries = w.gguf_entries() if kind == "gguf" else w.rkllm_entries()
    tensors = w.gguf_tensors() if kind == "gguf" else w.rkllm_tensors()
    trailer = "1.3.1" if masked else None
    if strategy == "duplicate":
        src = rng.choice(entries)
        dup = (src[0], *rng.choice(_retyped_entries([src], rng))[1:])
        entries = [*entries, dup]
        rng.shuffle(entries)
    elif strategy == "retype":
        entries = _retyped_entries(entries, rng)
    data = bytearray(w.container(entries, tensors, masked=masked, trailer=trailer))
    if strategy in ("duplicate", "retype"):
        return bytes(data)
    fm = field_map(bytes(data))
    steps = [strategy] if strategy != "mixed" else rng.choices(
        ["bitflip", "truncate", "huge", "vtype"], k=rng.randrange(2, 4))
    for step in steps:
        if step == "bitflip":
            for _ in range(rng.randrange(1, 9)):
                # mostly in the header and metadata, where a flip changes what is parsed
                end = fm.header_end if rng.random() < 0.9 else len(data)
                pos = rng.randrange(min(end, len(data)))
                data[pos] ^= 1 << rng.randrange(8)
        elif step == "truncate":
            data = data[: rng.randrange(len(data))]
        elif step == "huge":
            pos = rng.choice(fm.lengths + fm.dims)
            if pos + 8 <= len(data):
                value = rng.choice(HUGE) if rng.random() < 0.7 else len(data) - pos + rng.randrange(
                    -16, 64)
                struct.pack_into("<Q", data, pos, max(0, value) % 2**64)
        elif step == "vtype":
            pos = rng.choice(fm.vtypes)
            if pos + 4 <= len(data):
                struct.pack_into("<I", data, pos, rng.choice(
                    [rng.randrange(13), rng.randrange(13, 256), 2**32 - 1]))
    return bytes(data)


def inputs(kind: str, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``count`` mutated files, strategies in turn, reproducible from ``seed``."""
    rng = random.Random(f"{seed}-{kind}")
    for i in range(count):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        yield strategy, make_input(kind, strategy, rng)


# --- the worker (runs in the memory-limited subprocess) ----------------------------------------


class Hang(Exception):
    """Raised by the interval timer: the input took too long."""


def _drivers(kind: str) -> list[tuple[str, Any]]:
    from rkllm_core.cli import main as cli_main
    from rkllm_core.config import RuntimeConfig
    from rkllm_core.errors import RKLLMError
    from rkllm_core.formats.gguf import check_gguf, read_gguf
    from rkllm_core.formats.rkllm import read_metadata
    from rkllm_core.model_info import describe_model
    from rkllm_core.npu.checks import check_model_file, model_checks
    from rkllm_core.npu.tokenizer import from_metadata

    def info(path: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(["info", path])
        if rc not in (0, 2) or "Traceback" in err.getvalue():
            raise RuntimeError(f"rkllm info exited {rc}: {err.getvalue()[-200:]}")
        if rc == 2:  # the one-line "error: ..." of a typed error
            if err.getvalue().count("\n") != 1:
                raise RuntimeError(f"rkllm info printed more than one line: {err.getvalue()}")
            raise RKLLMError(err.getvalue())

    def npu_preload(path: str) -> None:
        meta = check_model_file(path)
        model_checks(meta, RuntimeConfig(max_context_len=1024), "1.3.1", board="RK3588")
        from_metadata(meta)

    if kind == "gguf":
        return [("read_gguf", read_gguf), ("check_gguf", check_gguf),
                ("describe", describe_model), ("rkllm info", info)]
    return [("read_metadata", read_metadata), ("npu pre-load", npu_preload),
            ("describe", describe_model), ("rkllm info", info)]


def worker_main() -> None:
    """Read ``{"path", "kind"}`` lines on stdin; write one JSON result line per input."""
    import resource
    import signal
    import tracemalloc

    extra = int(os.environ.get("FUZZ_AS_EXTRA", "0"))
    timeout = float(os.environ.get("FUZZ_TIMEOUT", "5"))

    def alarm(signum: int, frame: Any) -> None:
        raise Hang

    signal.signal(signal.SIGALRM, alarm)
    from rkllm_core.errors import RKLLMError

    drivers = {k: _drivers(k) for k in ("gguf", "rkllm")}
    warm = Path(os.environ["FUZZ_WARMUP_DIR"])
    for kind in ("gguf", "rkllm"):  # imports and first-call caches out of the measurement
        for _, fn in drivers[kind]:
            with contextlib.suppress(Exception):
                fn(str(warm / f"valid.{kind}"))
    limit = 0
    if extra:  # the address space now, plus what one input may use
        status = Path("/proc/self/status").read_text()
        vm_size = int(next(x for x in status.splitlines() if x.startswith("VmSize:")).split()[1])
        limit = vm_size * 1024 + extra
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({"ready": True, "as_limit": limit}), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        results: dict[str, str] = {}
        tracemalloc.start()
        t0 = time.perf_counter()
        for name, fn in drivers[task["kind"]]:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                fn(task["path"])
                results[name] = "ok"
            except RKLLMError:
                results[name] = "typed"
            except Hang:
                results[name] = "hang"
            except BaseException as exc:  # what the fuzz test is looking for
                results[name] = f"other {type(exc).__name__}: {str(exc)[:160]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        secs = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(json.dumps({"results": results, "peak": peak, "secs": secs}), flush=True)


# --- the parent --------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a fuzz run found."""

    inputs: int = 0
    clean: int = 0  # every driver ran without error (a mutation that changed nothing vital)
    typed: int = 0  # at least one typed error, nothing else
    other: int = 0
    hangs: int = 0
    crashes: int = 0  # the worker died (memory limit, signal)
    over_memory: int = 0  # peak above the bound (base + ratio x file size)
    as_limit: int = 0
    peak_bytes: int = 0
    worst_ratio: float = 0.0  # peak / file size
    slowest_s: float = 0.0
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"inputs {self.inputs}, typed {self.typed}, clean {self.clean}, other"
                f" {self.other}, hangs {self.hangs}, worker deaths {self.crashes}, over the"
                f" memory bound {self.over_memory}, peak"
                f" {self.peak_bytes / 1024:.0f} KiB (worst {self.worst_ratio:.1f}x the file),"
                f" slowest {self.slowest_s * 1000:.0f} ms")


class Worker:
    """The memory-limited subprocess; restarted after a death or a hang it cannot interrupt."""

    def __init__(self, workdir: Path, as_extra: int, timeout: float) -> None:
        self.workdir = workdir
        self.as_extra = as_extra
        self.as_limit = 0
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "FUZZ_AS_EXTRA": str(self.as_extra),
               "FUZZ_TIMEOUT": str(self.timeout), "FUZZ_WARMUP_DIR": str(self.workdir),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"),
                                              os.environ.get("PYTHONPATH", "")])}
        code = "from formats.fuzzing import worker_main; worker_main()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, cwd=self.workdir)
        ready = self._read(120)
        if not ready or not ready.get("ready"):
            raise RuntimeError("the fuzz worker did not start")
        self.as_limit = int(ready["as_limit"])

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def run(self, path: Path, kind: str) -> dict[str, Any] | str:
        """The worker's report, or "hang" / "died"."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"path": str(path), "kind": kind}) + "\n")
        self.proc.stdin.flush()
        report = self._read(self.timeout * 6 + 10)
        if report is None:
            dead = self.proc.poll() is not None
            self.stop()
            return "died" if dead else "hang"
        return report

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def run_fuzz(workdir: Path, count: int, seed: int, *, as_extra: int = 512 << 20,
             timeout: float = 5.0, kinds: tuple[str, ...] = ("gguf", "rkllm"),
             mem_base: int = 128 << 10, mem_ratio: float = 16.0) -> Summary:
    """Fuzz ``count`` inputs per kind in a worker whose address space may grow by
    ``as_extra`` bytes; an input whose allocation peak passes ``mem_base + mem_ratio x size``
    counts as over the memory bound. Failing inputs are kept in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "valid.gguf").write_bytes(w.gguf_file())
    (workdir / "valid.rkllm").write_bytes(w.rkllm_file())
    summary = Summary()
    worker = Worker(workdir, as_extra, timeout)
    try:
        for kind in kinds:
            for index, (strategy, data) in enumerate(inputs(kind, count, seed)):
                path = workdir / f"input.{kind}"
                path.write_bytes(data)
                report = worker.run(path, kind)
                summary.inputs += 1
                problem = None
                if isinstance(report, str):
                    if report == "hang":
                        summary.hangs += 1
                    else:
                        summary.crashes += 1
                    problem = report
                else:
                    outcomes = report["results"].values()
                    if any(o == "hang" for o in outcomes):
                        summary.hangs += 1
                        problem = "hang"
                    elif any(o.startswith("other") for o in outcomes):
                        summary.other += 1
                        problem = next(o for o in outcomes if o.startswith("other"))
                    elif any(o == "typed" for o in outcomes):
                        summary.typed += 1
                    else:
                        summary.clean += 1
                    if report["peak"] > mem_base + mem_ratio * len(data) and problem is None:
                        summary.over_memory += 1
                        problem = f"peak {report['peak']} bytes for {len(data)} bytes"
                    summary.peak_bytes = max(summary.peak_bytes, report["peak"])
                    summary.worst_ratio = max(summary.worst_ratio,
                                              report["peak"] / max(len(data), 1))
                    summary.slowest_s = max(summary.slowest_s, report["secs"])
                if problem is not None:
                    keep = workdir / f"failing-{kind}-{index}-{strategy}.{kind}"
                    keep.write_bytes(data)
                    summary.examples.append(f"{keep.name}: {problem}")
        summary.as_limit = worker.as_limit
    finally:
        worker.stop()
    return summary


def large_inputs(n_tokens: int = 200_000) -> list[tuple[str, str, bytes]]:
    """Files of a few MB (a large vocabulary) whose counts are corrupted so that they still
    pass a plausibility check: what made memory grow to many times the file size."""
    out: list[tuple[str, str, bytes]] = []
    vocab = [f"tok{i}" for i in range(n_tokens)]
    for kind in ("gguf", "rkllm"):
        masked = kind == "rkllm"
        base = w.gguf_entries() if kind == "gguf" else w.rkllm_entries()
        entries = [
            ("tokenizer.ggml.tokens", w.ARRAY, (w.STRING, vocab)) if k == "tokenizer.ggml.tokens"
            else ("tokenizer.ggml.token_type", w.ARRAY, (w.I32, [1] * n_tokens))
            if k == "tokenizer.ggml.token_type"
            else ("tokenizer.ggml.scores", w.ARRAY, (w.F32, [0.0] * n_tokens))
            if k == "tokenizer.ggml.scores" else (k, t, v)
            for k, t, v in base
        ]
        tensors = w.gguf_tensors() if kind == "gguf" else w.rkllm_tensors()
        data = w.container(entries, tensors, masked=masked,
                           trailer="1.3.1" if masked else None)
        fm = field_map(data)
        for label, key, unit in (("tokens", b"tokenizer.ggml.tokens", 8),
                                 ("token_type", b"tokenizer.ggml.token_type", 4)):
            needle = w.mask_bytes(key) if masked else key
            count_at = data.index(needle) + len(key) + 4 + 4
            assert count_at in fm.lengths
            for value in ((len(data) - count_at - 8) // unit, 5_000_000, 2**63):
                mutated = bytearray(data)
                struct.pack_into("<Q", mutated, count_at, value)
                out.append((f"{kind} {label} count {value}", kind, bytes(mutated)))
    return out


def run_large(workdir: Path, *, n_tokens: int = 200_000, as_extra: int = 512 << 20,
              timeout: float = 20.0) -> list[tuple[str, int, dict[str, Any] | str]]:
    """Each large input through the worker: ``(name, file size, report)``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "valid.gguf").write_bytes(w.gguf_file())
    (workdir / "valid.rkllm").write_bytes(w.rkllm_file())
    worker = Worker(workdir, as_extra, timeout)
    out = []
    try:
        for name, kind, data in large_inputs(n_tokens):
            path = workdir / f"large.{kind}"
            path.write_bytes(data)
            out.append((name, len(data), worker.run(path, kind)))
    finally:
        worker.stop()
    return out
