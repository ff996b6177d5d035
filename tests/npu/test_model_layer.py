"""RKLLMModel over the NPU engine and the fake runtime: stop strings, embeddings, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rkllm_core.config import RuntimeConfig
from rkllm_core.model import RKLLMModel

from .conftest import fake_runtime


@pytest.mark.parametrize("family", ["1.1", "1.2.0", "1.3"])
def test_model_over_npu_engine(family: str, model_file: Path) -> None:
    rt = fake_runtime(family)
    # "Hello, " "STOP" " world": the model layer's stop string must end the run at once
    rt.script("N:48656c6c6f:1;N:2c20:2;N:53544f50:3;N:20776f726c64:4;Z:200:1;F")
    with RKLLMModel(str(model_file), RuntimeConfig(max_context_len=2048),
                    library=str(rt.path)) as model:
        assert model.backend == "npu" and model.info.family == family
        result = model.generate([{"role": "user", "content": "hi"}], stop=["STOP"])
        assert result.text == "Hello, "
        assert result.usage.completion_tokens == 3
        # stopped at once: 1.2.1+ pause in the callback; older families abort from a helper
        # thread, so the runtime may deliver a few more tokens (never emitted)
        assert int(rt.rec().get("run.slow_tokens", "0")) < 200
        rec = rt.rec()
        if family == "1.1":  # no raw-prompt call: the rendered prompt goes as tokens
            assert rec["run.input_type"] == "1"
        else:
            assert rec["run.prompt"] == "hi"
        rt.script("H:0:4;F")  # one hidden row per input token
        vectors = model.embed(["hello", "world wide"])
        assert vectors.shape == (2, 4)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        assert [v for k, v in rt.record() if k == "run.input_type"][-2:] == ["1", "1"]
    assert rt.rec()["destroy.handle"] == rec["run.handle"]


@pytest.mark.parametrize("family", ["1.2.1", "1.3"])
def test_runtime_template_receives_only_the_turn(family: str, model_file: Path) -> None:
    """After set_chat_template the runtime wraps prompts: the model layer must not render."""
    rt = fake_runtime(family)
    with RKLLMModel(str(model_file), library=str(rt.path)) as model:
        assert model.info.raw_prompt is True
        model.set_chat_template("SYS", "<u>", "</u><a>")
        assert model.info.raw_prompt is False
        assert rt.rec()["chat_template.prefix"] == "<u>"
        rt.script("N:6f6b:1;F")
        conversation = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second question"},
        ]
        assert model.generate(conversation, keep_history=True).text == "ok"
        rec = rt.rec()
        assert rec["run.prompt"] == "second question"
        assert rec["run.role"] == "user"
        assert rec["run.keep_history"] == "1"
        rt.script("N:6f6b:1;F")
        model.generate([*conversation, {"role": "tool", "content": "42", "tool_call_id": "c1"}])
        assert rt.rec()["run.prompt"] == "42"
        assert rt.rec()["run.role"] == "tool"


def test_function_tools_reach_the_runtime(model_file: Path) -> None:
    rt = fake_runtime("1.3")
    with RKLLMModel(str(model_file), library=str(rt.path)) as model:
        model.set_function_tools("You can call tools.", '[{"type": "function"}]', "<resp>")
        rec = rt.rec()
        assert rec["function_tools.system"] == "You can call tools."
        assert rec["function_tools.tools"] == '[{"type": "function"}]'
        assert rec["function_tools.response"] == "<resp>"


def test_bad_input_gets_typed_errors(model_file: Path, tmp_path: Path) -> None:
    from rkllm_core.errors import ConfigError, ModelNotFoundError

    rt = fake_runtime("1.2.1")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['bogus'\] for the npu engine"):
        RKLLMModel(str(model_file), library=str(rt.path), bogus=1)
    with RKLLMModel(str(model_file), RuntimeConfig(max_context_len=2048),
                    library=str(rt.path)) as model:
        for call in (lambda: model.generate("abc\ud800def"),
                     lambda: model.generate([{"role": "user", "content": "x\udcff"}]),
                     lambda: model.embed(["fine", "bad \udc80"]),
                     lambda: model.tokenize("\ud83d")):
            with pytest.raises(ConfigError, match=r"lone surrogate U\+D[0-9A-F]{3} at index \d+"):
                call()
        with pytest.raises(ConfigError, match=r"SamplingParams\.seed"):
            model.generate("hi", seed=2**70)
        with pytest.raises(ConfigError, match=r"SamplingParams\.temperature=inf"):
            model.generate("hi", temperature=float("inf"))
        rt.script("N:6f6b:1;F")
        assert model.generate("still works").text == "ok"
    with pytest.raises(ModelNotFoundError):
        RKLLMModel(str(tmp_path / "no" / "such.rkllm"), library=str(rt.path))
