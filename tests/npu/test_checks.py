"""Pre-init checks that read the board: CPU features, NPU driver, platform."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rkllm_core.config import RuntimeConfig
from rkllm_core.errors import ConfigError, ModelFormatError, RuntimeVersionError
from rkllm_core.formats.rkllm import read_metadata
from rkllm_core.npu import checks

from .rkllm_writer import STRING, write_model

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_cpu_features_and_board(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(ARM_CPUINFO)
    feats = checks.cpu_features(info)
    assert feats is not None and "asimddp" in feats and "sve" not in feats
    assert checks.cpu_features(tmp_path / "absent") is None
    dt = tmp_path / "compatible"
    dt.write_bytes(b"radxa,rock-5b\0rockchip,rk3588\0")
    assert checks.board_platform(dt) == "RK3588"
    dt.write_bytes(b"raspberrypi,5-model-b\0brcm,bcm2712\0")
    assert checks.board_platform(dt) is None


def test_version_tuple() -> None:
    assert checks.version_tuple("1.2.1b1") == (1, 2, 1)
    assert checks.version_tuple("0.9.8") > checks.version_tuple("0.9.7")
    assert checks.version_tuple("1.3") == (1, 3, 0)


@pytest.fixture
def arm_board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    info = tmp_path / "cpuinfo"
    info.write_text(ARM_CPUINFO)
    monkeypatch.setattr(checks.platform, "machine", lambda: "aarch64")
    real = checks.cpu_features
    monkeypatch.setattr(checks, "cpu_features", lambda path=info: real(path))
    return tmp_path


def test_sve_warning_for_runtime_130(arm_board: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out = checks.system_checks("1.3.0")
    sve = [c for c in out if c.name == "cpu sve"]
    assert sve and sve[0].status == "warn" and "SIGILL" in sve[0].detail
    assert "SIGILL" in caplog.text
    assert not [c for c in checks.system_checks("1.3.1") if c.name == "cpu sve"]
    assert not [c for c in checks.system_checks("1.2.3") if c.name == "cpu sve"]


def test_driver_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ver = tmp_path / "version"
    ver.write_text("RKNPU driver: v0.9.6\n")
    assert checks.driver_version(ver) == "0.9.6"
    real = checks.driver_version
    monkeypatch.setattr(checks, "driver_version", lambda path=ver: real(path))
    drv = next(c for c in checks.system_checks("1.2.3") if c.name == "npu driver")
    assert drv.status == "warn" and "0.9.8" in drv.detail
    ver.write_text("RKNPU driver: v0.9.8\n")
    drv = next(c for c in checks.system_checks("1.2.3") if c.name == "npu driver")
    assert drv.status == "ok"
    ver.unlink()
    drv = next(c for c in checks.system_checks("1.2.3") if c.name == "npu driver")
    assert drv.status == "info" and "root" in drv.detail


def test_model_checks(tmp_path: Path) -> None:
    meta = read_metadata(write_model(tmp_path / "m.rkllm", toolkit="1.2.1", max_context=4096))
    ok = checks.model_checks(meta, RuntimeConfig(max_context_len=4096), "1.2.1b1",
                             board="RK3588")
    assert {c.name: c.status for c in ok} == {"model vs runtime": "ok",
                                              "max_context_len": "ok", "platform": "ok"}
    with pytest.raises(RuntimeVersionError, match=r"toolkit 1\.2\.1"):
        checks.model_checks(meta, RuntimeConfig(), "1.2.0")
    with pytest.raises(ConfigError, match="4096"):
        checks.model_checks(meta, RuntimeConfig(max_context_len=4097), "1.2.1")
    with pytest.raises(ModelFormatError, match="converted for RK3588, but this board is RK3576"):
        checks.model_checks(meta, RuntimeConfig(), "1.2.1", board="RK3576")
    unknown = read_metadata(write_model(tmp_path / "u.rkllm", extra=[
        ("rkllm.platform", STRING, "rk3576")]))
    assert unknown.platform == "RK3576"
    out = checks.model_checks(unknown, RuntimeConfig(), None)
    assert out[0].status == "warn"
