"""A toolkit export generates through the PC engine's compact decoder with its quantized
numerics: the quantized layers run as modules, so every token equals transformers' forward."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.toolkit import RKLLM


@pytest.mark.parametrize(("family", "dtype"), [("llama", "w8a8"), ("qwen2", "w4a16_g32")])
def test_export_generates_the_same_tokens_with_either_decoder(
    tiny_model_dir: Callable[[str], Path],
    calib_json: Path,
    tmp_path: Path,
    family: str,
    dtype: str,
) -> None:
    from rkllm_core.toolkit.quant.qlinear import QuantLinear

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir(family)))
    platform = "rk3588" if dtype.startswith("w8") else "rk3576"
    llm.build(quantized_dtype=dtype, target_platform=platform, num_npu_core=1,
              dataset=str(calib_json))  # fmt: skip
    out = tmp_path / "m.rkllm-pc"
    assert llm.export_rkllm(str(out)) == 0
    cfg = RuntimeConfig(max_context_len=64, max_new_tokens=20)
    tokens = {}
    for compact in (True, False):
        with RKLLMModel(str(out), cfg, backend="pc", compact_decoder=compact) as model:
            assert model.info.extra["decoder"] == ("compact" if compact else "transformers")
            if compact:
                decoder = model._engine._decoder
                # the quantized projections are not fused into float matrices
                assert decoder.layers[0].qkv is None
                assert isinstance(decoder.layers[0].projections[0], QuantLinear)
            result = model.generate("The quick brown fox", top_k=1, repeat_penalty=1.0)
            tokens[compact] = result.token_ids
    assert tokens[True] == tokens[False]
    assert len(tokens[True]) > 0
