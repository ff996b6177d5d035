"""Every invalid build() argument gives a clear error, changes nothing and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rkllm_core.errors import BuildConfigError, ConfigError, RKLLMError
from rkllm_core.toolkit import RKLLM


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Callable[[str], Path]) -> RKLLM:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    return llm


def _json(tmp_path: Path, data: Any, name: str = "d.json") -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"quantized_dtype": "w3a16"}, "w4a16_g32"),
    ({"quantized_dtype": "w4a16", "target_platform": "rk3588"}, "RK3588 does not run"),
    ({"quantized_dtype": "w8a8_g128", "target_platform": "rk3576", "num_npu_core": 2}, "accepts"),
    ({"quantized_dtype": "w4a8_g32", "target_platform": "rv1126b", "num_npu_core": 1}, "RK3562"),
    ({"target_platform": "rk3399"}, "RK3588"),
    ({"num_npu_core": 4}, "num_npu_core"),
    ({"target_platform": "rk3576", "num_npu_core": 3}, "1, 2"),
    ({"max_context": 5000}, "multiple of 32"),
    ({"max_context": 32768}, "16384"),
    ({"max_context": 0}, "multiple of 32"),
    ({"optimization_level": 2}, "optimization_level"),
    ({"do_quantization": "yes"}, "do_quantization"),
    ({"quantized_algorithm": "entropy"}, "kl_divergence"),
    ({"quantized_algorithm": "grq"}, "w4a16"),
    ({"quantized_algorithm": "normal_r8"}, "LoRA"),
    ({"hybrid_rate": 1.0}, r"\[0, 1\)"),
    ({"hybrid_rate": -0.1}, "hybrid_rate"),
    ({"activation_mode": "per-token"}, "activation_mode"),
    ({"extra_qparams": "model.qparams"}, "does not exist"),
    ({"dataset": "/nonexistent/data_quant.json"}, "does not exist"),
    # group size 512 does not divide the tiny model's 256-wide layers
    ({"quantized_dtype": "w8a8_g512"}, "group size 512 does not divide layer"),
    # RK3562 runs no ungrouped w4a16, so hybrid_rate has no partner dtype
    (
        {
            "quantized_dtype": "w4a16_g32",
            "target_platform": "rk3562",
            "num_npu_core": 1,
            "hybrid_rate": 0.5,
        },
        "hybrid_rate",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_invalid_argument_is_a_clear_error(
    loaded: RKLLM, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    before = loaded._built
    with pytest.raises(BuildConfigError, match=message):
        loaded.build(**kwargs)
    assert loaded._built is before  # a failed build leaves the last good one in place
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"input": "a", "target": "b"}, "non-empty JSON list"),
        ([], "empty"),
        (["just text"], "sample 0 is a str"),
        ([{"input": "a"}], "'target'"),
        ([{"input": "a", "target": 3}], "'target'"),
        ([{"input": "ok", "target": ""}, {"input": " ", "target": ""}], "sample 1 is empty"),
    ],
)
def test_invalid_dataset(loaded: RKLLM, tmp_path: Path, data: Any, message: str) -> None:
    path = _json(tmp_path, data)
    with pytest.raises(BuildConfigError, match=message):
        loaded.build(dataset=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_return_codes_without_strict(tiny_model_dir: Callable[[str], Path], caplog) -> None:
    llm = RKLLM()
    assert llm.build() == -1  # nothing loaded
    assert "load_huggingface" in caplog.text
    assert llm.load_huggingface("/nonexistent/model") == -1
    assert llm.load_gguf("/nonexistent/model.gguf") == -1
    assert llm.export_rkllm("x.rkllm-pc") == -1
    assert llm.load_huggingface(str(tiny_model_dir("llama")), device="tpu") == -1
    assert llm.load_huggingface(str(tiny_model_dir("llama")), dtype="int8") == -1
    assert llm.load_huggingface(str(tiny_model_dir("llama"))) == 0
    caplog.clear()
    assert llm.build(quantized_dtype="w4a16", target_platform="rk3588") == -1
    assert "w8a8, w8a8_g128" in caplog.text  # says what the platform accepts
    assert llm.build(quantized_dtype="w8a8", optimization_level=0) == 0


def test_custom_config_validated(tiny_model_dir: Callable[[str], Path]) -> None:
    llm = RKLLM(strict=True)
    with pytest.raises(ConfigError, match="unknown keys"):
        llm.load_huggingface(str(tiny_model_dir("llama")), custom_config={"NOPE": 1})
    with pytest.raises(ConfigError, match="ACT_TYPE"):
        llm.load_huggingface(str(tiny_model_dir("llama")), custom_config={"ACT_TYPE": "tanh"})
    ok = {"BLOCKNAME": "model.layers", "ACT_TYPE": "silu"}
    assert llm.load_huggingface(str(tiny_model_dir("llama")), custom_config=ok) == 0


def test_errors_are_typed() -> None:
    assert issubclass(BuildConfigError, ConfigError) and issubclass(BuildConfigError, RKLLMError)
