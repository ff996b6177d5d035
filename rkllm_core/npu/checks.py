"""Checks made before ``rkllm_init``, so a bad combination fails with a message, not a crash.

The runtime itself answers most mistakes with ``-1`` (or SIGILL / a segfault): a model newer
than the runtime, a ``max_context_len`` above the model's limit, a model for another platform,
a too-old NPU driver, a 1.3.0 runtime on a CPU without SVE. Everything here reads files only.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import RuntimeConfig
from ..errors import ConfigError, ModelFormatError, RuntimeVersionError
from ..formats.rkllm import RKLLMMetadata, read_metadata

log = logging.getLogger(__name__)

MIN_DRIVER = (0, 9, 8)
DRIVER_VERSION_FILE = "/sys/kernel/debug/rknpu/version"

Status = Literal["ok", "warn", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the pre-init report (also printed by ``rkllm doctor``)."""

    name: str
    status: Status
    detail: str


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.2.1b1"`` -> ``(1, 2, 1)``; pre-release suffixes compare equal to the release."""
    nums = [int(x) for x in re.findall(r"\d+", version)[:3]]
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


def cpu_features(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str] | None:
    """CPU feature flags (``Features`` on arm64, ``flags`` on x86); None if unreadable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("features", "flags"):
            flags.update(value.split())
    return frozenset(flags)


def board_platform(
    compatible: str | os.PathLike[str] = "/proc/device-tree/compatible",
) -> str | None:
    """The Rockchip SoC (``RK3588``, ``RK3576`` …) from the device tree; None elsewhere."""
    try:
        raw = Path(compatible).read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        m = re.fullmatch(rb"rockchip,(rk\d{4}[a-z]?)", item.strip())
        if m:
            return m.group(1).decode().upper()
    return None


def driver_version(path: str | os.PathLike[str] = DRIVER_VERSION_FILE) -> str | None:
    """The RKNPU kernel driver version (the file is readable by root only); None if unknown."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else None


def driver_unknown_reason(path: str | os.PathLike[str] = DRIVER_VERSION_FILE) -> str:
    """Why the driver version is unknown: the file is missing, or only root may read it."""
    p = Path(path)
    try:
        exists = p.exists()
    except OSError:  # a parent directory only root may search (debugfs)
        exists = None
    if exists:
        if os.access(p, os.R_OK):
            return f"{p} holds no version number"
        return f"{p} is readable by root only; run as root to see the driver version"
    if exists is None or (p.parent.parent.is_dir() and not os.access(p.parent.parent, os.R_OK)):
        return f"{p.parent.parent} is readable by root only; run as root to see the driver"
    return (f"{p} does not exist: no RKNPU driver here (on a board, debugfs must be mounted"
            f" and read as root)")


def check_model_file(model_path: str | os.PathLike[str]) -> RKLLMMetadata:
    """Read the model's metadata; refuses a missing, unreadable or non-.rkllm file."""
    p = Path(model_path)
    if p.suffix.lower() in (".gguf", ".safetensors", ".bin") and p.is_file():
        # Read anyway: the magic decides, but the message should mention the likely mix-up.
        try:
            return read_metadata(p)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{exc} (the NPU engine needs a .rkllm file)") from exc
    return read_metadata(p)


def model_checks(
    meta: RKLLMMetadata,
    config: RuntimeConfig,
    runtime_version: str | None,
    *,
    board: str | None = None,
) -> list[Check]:
    """Compare the model with the runtime and the config; raises on what the runtime refuses.

    Returns the report lines (ok / warn / info) of everything that passed.
    """
    out: list[Check] = []
    toolkit = meta.toolkit_version
    if toolkit and runtime_version:
        if version_tuple(toolkit) > version_tuple(runtime_version):
            raise RuntimeVersionError(
                f"{meta.path.name} was converted by rkllm-toolkit {toolkit}, newer than the RKLLM"
                f" runtime {runtime_version} (the runtime refuses it: 'The rkllm-runtime version"
                f" is lower than the rkllm-toolkit version'); install runtime >= {toolkit} or"
                f" convert the model with toolkit {runtime_version}"
            )
        out.append(
            Check("model vs runtime", "ok", f"toolkit {toolkit} <= runtime {runtime_version}")
        )
    else:
        out.append(
            Check("model vs runtime", "warn", f"cannot compare (toolkit {toolkit or 'unknown'},"
                  f" runtime {runtime_version or 'unknown'})")
        )
    limit = meta.max_context
    if limit is not None:
        if config.max_context_len > limit:
            raise ConfigError(
                f"max_context_len={config.max_context_len} is above the limit the model was"
                f" converted for ({limit}, rkllm.max_context in {meta.path.name}); the runtime"
                f" refuses it. Use max_context_len <= {limit} or re-convert with a larger"
                f" max_context"
            )
        out.append(Check("max_context_len", "ok", f"{config.max_context_len} <= {limit}"))
    else:
        out.append(Check("max_context_len", "warn", "the model does not state its max_context"))
    model_platform = meta.platform
    if board and model_platform and not model_platform.startswith("code "):
        if board.upper() != model_platform.upper():
            raise ModelFormatError(
                f"{meta.path.name} was converted for {model_platform}, but this board is {board};"
                f" the runtime refuses it. Convert the model with target_platform="
                f"'{board.lower()}'"
            )
        out.append(Check("platform", "ok", f"model and board are {board}"))
    return out


def system_checks(runtime_version: str | None) -> list[Check]:
    """Board-level warnings: SVE for runtime 1.3.0, NPU driver version. Logged and returned."""
    out: list[Check] = []
    machine = platform.machine().lower()
    feats = cpu_features()
    if runtime_version and version_tuple(runtime_version)[:3] == (1, 3, 0):
        if machine in ("aarch64", "arm64") and feats is not None and "sve" not in feats:
            msg = (
                "RKLLM runtime 1.3.0's prebuilt library uses SVE instructions, which this CPU"
                " lacks (RK3588 has none): it will die with SIGILL (Illegal instruction). Use"
                " runtime 1.2.3 or 1.3.1+"
            )
            log.warning("%s", msg)
            out.append(Check("cpu sve", "warn", msg))
        else:
            out.append(Check("cpu sve", "ok", "SVE present or not an arm64 CPU"))
    drv = driver_version()
    if drv is None:
        out.append(Check("npu driver", "info", f"unknown: {driver_unknown_reason()}"))
    elif version_tuple(drv) < MIN_DRIVER:
        msg = (
            f"RKNPU driver {drv} is older than 0.9.8, which the RKLLM runtime requires; update"
            f" the board's kernel"
        )
        log.warning("%s", msg)
        out.append(Check("npu driver", "warn", msg))
    else:
        out.append(Check("npu driver", "ok", drv))
    return out
