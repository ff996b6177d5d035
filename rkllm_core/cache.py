"""The cache directory (``$RKLLM_CACHE_DIR``) and crash-safe staging inside it.

Everything written to the cache is first written to a staging directory named
``.rkllm-partial-<pid>-<random>`` next to its destination and moved into place at the end, so
the cache never holds half a file. A process killed outright (``kill -9``, power loss) cannot
remove its staging directory; the next writer to the same place removes every staging
directory whose process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CacheDirError

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "RKLLM_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/rkllm"
STAGING_PREFIX = ".rkllm-partial-"


def cache_dir() -> Path:
    """Where fetched and converted models live: ``$RKLLM_CACHE_DIR`` or ``~/.cache/rkllm``."""
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR).expanduser()


def writable_dir(path: Path) -> Path:
    """Create ``path`` (inside the cache) if needed and check that it can be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{STAGING_PREFIX}{os.getpid()}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        source = (f"${ENV_CACHE_DIR}={os.environ[ENV_CACHE_DIR]}"
                  if os.environ.get(ENV_CACHE_DIR) else f"the default {DEFAULT_CACHE_DIR}")
        raise CacheDirError(
            f"the model cache {path} cannot be written ({exc.strerror or exc}); it comes from"
            f" {source}. Set {ENV_CACHE_DIR} to a writable directory"
        ) from exc
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(parent: Path) -> list[Path]:
    """Remove the staging directories under ``parent`` left by processes that no longer run."""
    removed: list[Path] = []
    try:
        entries = list(parent.glob(STAGING_PREFIX + "*"))
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        log.info("removing %s, left by an interrupted process %s", entry, pid_text)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def staging(parent: Path) -> Iterator[Path]:
    """A fresh staging directory in ``parent`` (created, checked writable, stale ones cleaned);
    removed on exit whatever happens. Move results out of it with :func:`os.replace`."""
    writable_dir(parent)
    clean_stale(parent)
    tmp = parent / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise CacheDirError(f"cannot create {tmp}: {exc}; set {ENV_CACHE_DIR}") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
