"""The handle is destroyed exactly once at interpreter exit and on Ctrl-C; ``rkllm doctor``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rkllm_core.npu.doctor import collect, format_table, main

from .conftest import FakeRuntime, fake_runtime

REPO = Path(__file__).resolve().parents[2]

EXIT_WITHOUT_CLOSE = """
import sys
from rkllm_core.config import RuntimeConfig
from rkllm_core.engine import PromptInput, Request
from rkllm_core.config import SamplingParams
from rkllm_core.npu.engine import NPUEngine

class Sink:
    def emit(self, event):
        return True

eng = NPUEngine(sys.argv[1], RuntimeConfig(), library=sys.argv[2])
req = Request(PromptInput("x"), SamplingParams().resolve(RuntimeConfig()))
eng.run(req, Sink())
# no close(): the interpreter's exit must destroy the handle
"""

CTRL_C_DURING_RUN = """
import sys, threading
from rkllm_core.config import RuntimeConfig, SamplingParams
from rkllm_core.engine import PromptInput, Request, TokenEvent
from rkllm_core.npu.engine import NPUEngine

started = threading.Event()

class Sink:
    def emit(self, event):
        if isinstance(event, TokenEvent):
            started.set()
        return True

eng = NPUEngine(sys.argv[1], RuntimeConfig(), library=sys.argv[2])
req = Request(PromptInput("x"), SamplingParams().resolve(RuntimeConfig()))
# a non-daemon worker blocked in a 200 s run, as a model's queue would be
worker = threading.Thread(target=eng.run, args=(req, Sink()))
worker.start()
started.wait(10)
print("started", flush=True)
threading.Event().wait(60)  # Ctrl-C arrives here
"""


def _spawn(tmp_path: Path, code: str, rt: FakeRuntime, model: Path,
           script: str) -> tuple[subprocess.Popen[str], Path]:
    report = tmp_path / "exit_report.txt"
    env = dict(os.environ, FAKE_RKLLM_EXIT_REPORT=str(report),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    prog = f"import cffi\nffi = cffi.FFI()\nffi.cdef('void fake_rkllm_script(const char*);')\n" \
           f"ffi.dlopen({str(rt.path)!r}).fake_rkllm_script({script.encode()!r})\n" + code
    proc = subprocess.Popen([sys.executable, "-c", prog, str(model), str(rt.path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, report


def _report(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_exit_without_close_destroys_once(tmp_path: Path, model_file: Path) -> None:
    rt = fake_runtime("1.2.0")
    proc, report = _spawn(tmp_path, EXIT_WITHOUT_CLOSE, rt, model_file, "N:6869:1;F")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rep = _report(report)
    assert rep["destroy_count"] == "1"
    assert rep["destroy.handle"] == rep["init.handle"]


@pytest.mark.parametrize("family", ["1.1", "1.3"])  # abort via helper thread / via pause
def test_ctrl_c_aborts_the_run_and_destroys_once(tmp_path: Path, model_file: Path,
                                                 family: str) -> None:
    rt = fake_runtime(family)
    proc, report = _spawn(tmp_path, CTRL_C_DURING_RUN, rt, model_file, "Z:100000:2;F")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert "KeyboardInterrupt" in err
    rep = _report(report)
    assert rep["destroy_count"] == "1"
    assert rep.get("run.aborted") == "1"
    assert int(rep["run.slow_tokens"]) < 100000


def test_doctor_table(rt: FakeRuntime, model_file: Path, capsys: pytest.CaptureFixture[str]
                      ) -> None:
    rows = collect(str(rt.path), None, str(model_file), 2048)
    table = dict((r[0].strip(), r) for r in rows)
    assert table["abi family"][1] == "ok" and table["abi family"][2].startswith(rt.family)
    assert table["library"][2] == str(rt.path)
    assert table["symbols"][1] == "ok"
    assert table["architecture"][2] == "qwen2"
    assert table["max_context_len"][1] == "ok"
    assert "2048 <= 8192" in table["max_context_len"][2]
    assert "abi family" in format_table(rows)
    assert main([str(model_file), "--library", str(rt.path)]) == 0
    assert "toolkit version" in capsys.readouterr().out


def test_doctor_reports_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("rkllm_core.npu.library.SYSTEM_DIRS", ())
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    bad = tmp_path / "x.rkllm"
    bad.write_bytes(b"not a model at all, just text")
    assert main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "not found" in out and "PC engine" in out
    assert "not an .rkllm file" in out
    rows = collect(None, None, str(model_file), 100000)
    assert any(r[0] == "model checks" and r[1] == "fail" for r in rows)
