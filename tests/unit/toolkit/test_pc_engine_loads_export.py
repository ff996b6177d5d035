"""The PC engine (RKLLMModel backend='pc') runs an export with the simulation's numerics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rkllm_core.toolkit import RKLLM


@pytest.mark.parametrize(("family", "dtype"), [("llama", "w8a8"), ("qwen2", "w4a16_g32")])
def test_rkllm_model_logits_equal_get_logits(
    tiny_model_dir: Callable[[str], Path],
    calib_json: Path,
    tmp_path: Path,
    family: str,
    dtype: str,
) -> None:
    from rkllm_core.model import RKLLMModel

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir(family)))
    platform = "rk3588" if dtype.startswith("w8") else "rk3576"
    llm.build(optimization_level=1, quantized_dtype=dtype, target_platform=platform,
              num_npu_core=1, dataset=str(calib_json))  # fmt: skip
    out = tmp_path / "m.rkllm-pc"
    assert llm.export_rkllm(str(out)) == 0
    ids = llm.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    expect = llm.get_logits({"input_ids": [ids]})[0].numpy()
    model = RKLLMModel(str(out), backend="pc")
    try:
        got = model.logits(ids)
        assert model.info.quantization == dtype
    finally:
        model.close()
    from rkllm_core.model_info import describe_model

    facts = describe_model(out)  # `rkllm info` reads the manifest without loading weights
    assert facts["quantized_dtype"] == dtype
    assert facts["target_platform"] == platform.upper()
    assert "not an NPU" in facts["format"]
    assert got.shape == expect.shape
    np.testing.assert_array_equal(got, expect)
