"""``rkllm doctor`` reports both engines, resolves demo names and says which path is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkllm_core.npu import checks
from rkllm_core.npu.doctor import collect, main, pc_engine_status

from . import writers as w


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr("rkllm_core.npu.library.SYSTEM_DIRS", ())
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.delenv("RKLLM_LIBRARY", raising=False)
    monkeypatch.setenv("RKLLM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _table(rows: list[tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    return {item.strip(): (status, detail) for item, status, detail in rows}


def test_demo_name_resolves_to_the_cached_copy_and_the_pc_path(no_runtime: Path) -> None:
    copy = no_runtime / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(w.gguf_file())
    table = _table(collect(model="smollm2"))
    assert table["demo model"][1].endswith(str(copy))
    assert table["uses"][1].startswith("pc engine: SmolLM2-135M-Instruct.Q4_1.gguf is not a")
    assert table["architecture"] == ("info", "llama")
    assert table["quantization"] == ("info", "Q8_0")
    assert table["library"][0] == "info"  # the NPU path is not the one used: not a failure
    pc_ok, _ = pc_engine_status()
    assert table["pc engine"][0] == ("ok" if pc_ok else "fail")
    assert main(["smollm2"]) == (0 if pc_ok else 1)


def test_a_demo_model_not_fetched_is_named_not_downloaded(no_runtime: Path) -> None:
    table = _table(collect(model="smollm2"))
    assert table["model"][0] == "warn" and "rkllm pull smollm2" in table["model"][1]
    assert not no_runtime.exists()


def test_without_a_model_both_engines_are_reported(no_runtime: Path) -> None:
    table = _table(collect())
    assert "npu engine" in table and "pc engine" in table
    assert "the PC engine for everything else" in table["uses"][1]
    assert "cannot run here" in table["npu engine"][1]
    assert main([]) == (0 if pc_engine_status()[0] else 1)


def test_a_corrupt_gguf_is_a_failing_row(no_runtime: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(w.gguf_file()[:700])
    table = _table(collect(model=str(bad)))
    assert table["model"][0] == "fail" and "truncated" in table["model"][1]
    assert main([str(bad)]) == 1


def test_missing_driver_file_is_not_called_root_only(tmp_path: Path) -> None:
    reason = checks.driver_unknown_reason(tmp_path / "rknpu" / "version")
    assert "does not exist" in reason and "readable by root only" not in reason
    present = tmp_path / "version"
    present.write_text("x")
    assert "holds no version number" in checks.driver_unknown_reason(present)
