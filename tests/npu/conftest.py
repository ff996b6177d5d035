"""Fixtures of the NPU binding tests: the fake runtime compiled per ABI family, model files.

The fake runtime (``fixture/fake_rkllmrt.c``) is a TEST FIXTURE compiled here with the system
C compiler; tests skip only when no compiler exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi
import pytest

from rkllm_core.config import RuntimeConfig, SamplingParams
from rkllm_core.engine import ErrorEvent, Event, FinishEvent, Request, TokenEvent

from .rkllm_writer import write_model

FIXTURE_SRC = Path(__file__).parent / "fixture" / "fake_rkllmrt.c"
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")

FAMILY_BUILDS: dict[str, tuple[str, str]] = {
    # family: (define, SDK_VERSION text embedded in the library)
    "1.1": ("FAMILY_1_1", "1.1.4"),
    "1.2.0": ("FAMILY_1_2_0", "1.2.0"),
    "1.2.1": ("FAMILY_1_2_1", "1.2.2"),
    "1.3": ("FAMILY_1_3", "1.3.1"),
}
FAMILIES = list(FAMILY_BUILDS)
# Every release's own layout (shared/reference/rkllm-runtime-abi.md): release -> family define.
# compile_fixture adds MM_SIZED for 1.2.1b1, whose multimodal input is 1.2.1's.
RELEASE_BUILDS: dict[str, str] = {
    "1.1.4": "FAMILY_1_1", "1.2.0": "FAMILY_1_2_0", "1.2.1b1": "FAMILY_1_2_0",
    "1.2.1": "FAMILY_1_2_1", "1.2.2": "FAMILY_1_2_1", "1.2.3": "FAMILY_1_2_1",
    "1.3.0": "FAMILY_1_3", "1.3.1": "FAMILY_1_3",
}

_GETTERS = """
const char* fake_rkllm_record(void);
void fake_rkllm_reset(void);
void fake_rkllm_script(const char* s);
void fake_rkllm_set_init_rc(int rc);
int fake_rkllm_destroy_count(void);
long fake_rkllm_layout(const char* what);
const char* fake_rkllm_family(void);
"""
_getter_ffi = cffi.FFI()
_getter_ffi.cdef(_GETTERS)
_build_lock = threading.Lock()


def build_dir() -> Path:
    d = Path(__file__).parent / "_build"  # git-ignored
    d.mkdir(exist_ok=True)
    return d


def compile_fixture(define: str, version: str | None, tag: str = "") -> Path:
    """Compile the fake runtime once per (family, version text); cached by source hash."""
    if CC is None:
        pytest.skip("no C compiler (cc/gcc/clang) to build the fake runtime test fixture")
    src = FIXTURE_SRC.read_bytes()
    flags = [f"-D{define}"]
    flags.append(f'-DSDK_VERSION="{version}"' if version else "-DNO_VERSION_TEXT")
    if version and version.startswith("1.2.1b"):
        flags.append("-DMM_SIZED")
    digest = hashlib.sha256(src + " ".join(flags).encode()).hexdigest()[:12]
    # The name must differ per variant: a loaded library is reused by path.
    out = build_dir() / f"fake_rkllmrt_{define}{tag}_{digest}.so"
    with _build_lock:
        if not out.exists():
            tmp = out.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run(
                [CC, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(tmp), str(FIXTURE_SRC),
                 *flags, "-lpthread"],
                check=True, capture_output=True,
            )
            tmp.replace(out)
    return out


@dataclass
class FakeRuntime:
    """A compiled fake runtime and its test-only getters."""

    family: str
    path: Path
    lib: Any

    def record(self) -> list[tuple[str, str]]:
        text = _getter_ffi.string(self.lib.fake_rkllm_record()).decode("utf-8", "replace")
        return [tuple(line.split("=", 1)) for line in text.splitlines() if "=" in line]

    def rec(self) -> dict[str, str]:
        """The record as a dict (the last value of a key wins)."""
        return dict(self.record())

    def reset(self) -> None:
        self.lib.fake_rkllm_reset()
        self.lib.fake_rkllm_set_init_rc(0)
        self.script("N:6869:1;F")

    def script(self, text: str) -> None:
        self._script = _getter_ffi.new("char[]", text.encode())
        self.lib.fake_rkllm_script(self._script)

    def destroy_count(self) -> int:
        return int(self.lib.fake_rkllm_destroy_count())

    def layout(self, what: str) -> int:
        return int(self.lib.fake_rkllm_layout(what.encode()))


_runtimes: dict[str, FakeRuntime] = {}


def fake_runtime(family: str) -> FakeRuntime:
    if family not in _runtimes:
        define, version = FAMILY_BUILDS[family]
        path = compile_fixture(define, version)
        _runtimes[family] = FakeRuntime(family, path, _getter_ffi.dlopen(str(path)))
    rt = _runtimes[family]
    rt.reset()
    return rt


def fake_release(release: str) -> FakeRuntime:
    """The fake runtime built with one release's layout and version text."""
    key = f"release-{release}"
    if key not in _runtimes:
        define = RELEASE_BUILDS[release]
        path = compile_fixture(define, release, f"_r{release.replace('.', '')}")
        family = next(f for f, (d, _) in FAMILY_BUILDS.items() if d == define)
        _runtimes[key] = FakeRuntime(family, path, _getter_ffi.dlopen(str(path)))
    rt = _runtimes[key]
    rt.reset()
    return rt


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rt(family: str) -> FakeRuntime:
    return fake_runtime(family)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("models") / "tiny.rkllm")


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RKLLM_LIBRARY", raising=False)
    monkeypatch.delenv("RKLLM_RUNTIME_FAMILY", raising=False)


@pytest.fixture
def make_engine(rt: FakeRuntime, model_file: Path) -> Iterator[Any]:
    from rkllm_core.npu.engine import NPUEngine

    made: list[NPUEngine] = []

    def make(config: RuntimeConfig | None = None, **kw: Any) -> NPUEngine:
        eng = NPUEngine(str(kw.pop("model", model_file)), config or RuntimeConfig(),
                        library=str(rt.path), **kw)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()


class ListSink:
    """Collects events; can stop after n tokens or raise on a token."""

    def __init__(self, stop_after: int | None = None, raise_after: int | None = None,
                 on_token: Any = None) -> None:
        self.events: list[Event] = []
        self.stop_after = stop_after
        self.raise_after = raise_after
        self.on_token = on_token
        self.lock = threading.Lock()

    def emit(self, event: Event) -> bool:
        with self.lock:
            self.events.append(event)
        tokens = self.tokens
        if isinstance(event, TokenEvent):
            if self.on_token is not None:
                self.on_token(len(tokens))
            if self.raise_after is not None and len(tokens) >= self.raise_after:
                raise ValueError("sink failure for the test")
            if self.stop_after is not None and len(tokens) >= self.stop_after:
                return False
        return True

    @property
    def tokens(self) -> list[TokenEvent]:
        return [e for e in self.events if isinstance(e, TokenEvent)]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.tokens)

    @property
    def terminal(self) -> list[Event]:
        return [e for e in self.events if isinstance(e, (FinishEvent, ErrorEvent))]

    @property
    def finish(self) -> FinishEvent:
        assert len(self.terminal) == 1, self.events
        end = self.terminal[0]
        assert isinstance(end, FinishEvent), end
        return end

    @property
    def error(self) -> BaseException:
        assert len(self.terminal) == 1, self.events
        end = self.terminal[0]
        assert isinstance(end, ErrorEvent), end
        return end.error


def request(item: Any, config: RuntimeConfig | None = None, **kw: Any) -> Request:
    sampling_kw = {k: kw.pop(k) for k in list(kw) if k in SamplingParams.model_fields}
    sampling = SamplingParams(**sampling_kw).resolve(config or RuntimeConfig())
    return Request(input=item, sampling=sampling, **kw)
