"""Seeded, bounded fuzzing of every reader a user reaches (adds well under a minute).

Mutations of valid GGUF and .rkllm files written by the tests (bit flips, truncations, huge
counts and lengths, wrong value types, duplicate keys) go through the readers, ``rkllm info``,
the NPU pre-load checks and tokenizer and the PC engine's pre-load check, in a subprocess whose
address space is limited. Only the project's typed errors may come out; nothing may hang; the
allocation peak stays within a small multiple of the file size. The longer run is
``benchmarks/fuzz_formats.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .fuzzing import run_fuzz, run_large

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="the memory limit reads /proc (Linux)")


def test_mutated_files_give_only_typed_errors_in_bounded_memory(tmp_path: Path) -> None:
    summary = run_fuzz(tmp_path, count=200, seed=13, timeout=5.0)
    assert summary.inputs == 400
    assert summary.other == 0 and summary.hangs == 0 and summary.crashes == 0, (
        summary.line(), summary.examples[:5])
    assert summary.over_memory == 0, (summary.line(), summary.examples[:5])
    assert summary.typed >= summary.inputs // 2  # the mutations do reach the checks
    assert summary.as_limit > 0


def test_corrupt_counts_in_larger_files_cost_a_small_multiple_of_the_file(tmp_path: Path
                                                                          ) -> None:
    for name, size, report in run_large(tmp_path, n_tokens=10_000):
        assert isinstance(report, dict), (name, report)
        outcomes = set(report["results"].values())
        assert outcomes <= {"typed", "ok"} and "typed" in outcomes, (name, report)
        # a valid vocabulary as Python strings is ~2.7x its bytes in the file
        assert report["peak"] <= 128 * 1024 + 4 * size, (name, size, report["peak"])
