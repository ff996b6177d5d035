"""Choosing the PC engine's kernels: torch by default, llama.cpp only when asked, for GGUF."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_core import ConfigError, EngineUnavailableError, RKLLMModel, RuntimeConfig
from rkllm_core.pc.kernels import KERNELS_ENV, choose_kernels


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")  # a name is all choose_kernels looks at
    return path


def test_torch_unless_asked(monkeypatch: pytest.MonkeyPatch, gguf_file: Path) -> None:
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert choose_kernels(None, gguf_file) == "torch"
    assert choose_kernels("llama.cpp", gguf_file) == "llama.cpp"
    assert choose_kernels("torch", gguf_file) == "torch"


def test_environment_switches_gguf_files_only(
    monkeypatch: pytest.MonkeyPatch, gguf_file: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv(KERNELS_ENV, "llama.cpp")
    assert choose_kernels(None, gguf_file) == "llama.cpp"
    assert choose_kernels(None, str(gguf_file)) == "llama.cpp"
    assert choose_kernels(None, tmp_path) == "torch"  # a Hugging Face directory
    assert choose_kernels("torch", gguf_file) == "torch"  # the option wins
    monkeypatch.setenv(KERNELS_ENV, "llamacpp")
    with pytest.raises(ConfigError, match=f"{KERNELS_ENV}='llamacpp'"):
        choose_kernels(None, gguf_file)


def test_llama_cpp_on_other_formats_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runs GGUF files"):
        choose_kernels("llama.cpp", tmp_path)
    with pytest.raises(ConfigError, match="kernels must be one of"):
        choose_kernels("cuda", tmp_path)  # type: ignore[arg-type]


def test_engine_refuses_llama_cpp_for_a_directory(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="runs GGUF files"):
        RKLLMModel(tiny_model_dir, RuntimeConfig(), kernels="llama.cpp")


def test_environment_leaves_a_directory_on_torch(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv(KERNELS_ENV, "llama.cpp")
    with RKLLMModel(tiny_model_dir, RuntimeConfig(max_context_len=64)) as model:
        assert model.info.extra["kernels"] == "torch"
        assert model.info.extra["decoder"] == "compact"


def test_missing_extra_names_the_fix(monkeypatch: pytest.MonkeyPatch, gguf_file: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(EngineUnavailableError, match=r"rkllm-py\[llamacpp\]"):
        RKLLMModel(gguf_file, RuntimeConfig(), kernels="llama.cpp")


def test_torch_only_options_are_refused_with_llama_cpp(gguf_file: Path) -> None:
    with pytest.raises(ConfigError, match="kernels='torch' only"):
        RKLLMModel(gguf_file, RuntimeConfig(), kernels="llama.cpp", dtype="bfloat16")


def test_shared_model_keys_on_the_kernels_it_gets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # the shared copy must follow RKLLM_PC_KERNELS: a torch copy loaded before the variable
    # was set is not the llama.cpp model the variable now asks for
    from test_gguf_loading import write_llama_gguf

    from rkllm_core import shared_model

    monkeypatch.setenv("RKLLM_GGUF_CACHE", "0")  # no converted copy of a throwaway file
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_model_dir, path, "F32")
    config = RuntimeConfig(max_context_len=64)
    on_torch = shared_model(path, config)
    try:
        assert on_torch.info.extra["kernels"] == "torch"
        assert shared_model(path, config, kernels="torch") is on_torch  # same kernels, one copy
        monkeypatch.setenv(KERNELS_ENV, "llama.cpp")
        monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the extra is "not installed"
        with pytest.raises(EngineUnavailableError, match=r"rkllm-py\[llamacpp\]"):
            shared_model(path, config)  # a new llama.cpp load, not the torch copy
        assert shared_model(path, config, kernels="torch") is on_torch  # the option wins
        with pytest.raises(ConfigError, match=f"{KERNELS_ENV}='cuda'"):
            monkeypatch.setenv(KERNELS_ENV, "cuda")
            shared_model(path, config)
    finally:
        on_torch.close()


def test_resolving_kernels_needs_no_torch(gguf_file: Path) -> None:
    # shared_model resolves the kernels before any engine loads: on a board (no torch) that
    # must not fail on an import; the engine then says what is missing
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from rkllm_core.pc.kernels import choose_kernels\n"
        f"print(choose_kernels('llama.cpp', {str(gguf_file)!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "llama.cpp"
