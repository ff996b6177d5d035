"""Every release's own layout, and async tasks that never overlap in the runtime.

The fake runtime refuses a task while another runs on the handle (as one handle runs one
task), and ``U:<ms>`` makes its task unwind after FINISH, as the real runtime's does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkllm_core.config import RuntimeConfig
from rkllm_core.engine import InferMode, MultimodalInput, PromptInput, TokenBatchInput
from rkllm_core.errors import GenerationError
from rkllm_core.npu.abi import LAYOUT_SPECS, ffi_for
from rkllm_core.npu.handle import Handle
from rkllm_core.npu.library import identify, layout_of_version

from .conftest import RELEASE_BUILDS, ListSink, fake_release, request

EXPECTED_LAYOUT = {
    "1.1.4": "1.1", "1.2.0": "1.2.0", "1.2.1b1": "1.2.1b1", "1.2.1": "1.2.1", "1.2.2": "1.2.1",
    "1.2.3": "1.2.1", "1.3.0": "1.3", "1.3.1": "1.3",
}
SIZES = ("RKLLMParam", "RKLLMExtendParam", "RKLLMInferParam", "RKLLMResult",
         "RKLLMLoraAdapter", "RKLLMPromptCacheParam")


@pytest.mark.parametrize("release", list(RELEASE_BUILDS))
def test_each_release_gets_its_layout_and_the_c_compiler_agrees(release: str) -> None:
    rt = fake_release(release)
    ident = identify(rt.path)
    assert ident.sdk_version == release and layout_of_version(release) == ident.layout
    assert ident.layout == EXPECTED_LAYOUT[release]
    ffi = ffi_for(ident.layout)
    for name in SIZES:
        assert ffi.sizeof(name) == rt.layout(f"sizeof {name}"), (release, name)
    mm = ffi.sizeof("RKLLMMultiModelInput")
    if ident.layout == "1.3":  # ours carries a zeroed tail for 1.3.1's audio block
        assert mm == rt.layout("sizeof RKLLMMultiModalInput") + 128
    else:
        assert mm == rt.layout("sizeof RKLLMMultiModalInput")
        assert ffi.sizeof("RKLLMInput") == rt.layout("sizeof RKLLMInput")
    assert mm == {"1.1": 24, "1.2.0": 24, "1.2.1b1": 48, "1.2.1": 48, "1.3": 272}[ident.layout]


@pytest.mark.parametrize("release", list(RELEASE_BUILDS))
def test_multimodal_input_reaches_each_release_field_by_field(release: str,
                                                              model_file: Path) -> None:
    from rkllm_core.npu.engine import NPUEngine

    rt = fake_release(release)
    eng = NPUEngine(str(model_file), RuntimeConfig(img_start="<i>", img_end="</i>",
                                                   img_content="<p>"), library=str(rt.path))
    try:
        spec = LAYOUT_SPECS[eng.runtime.identity.layout]
        n_image = 1 if spec.multimodal == "basic" else 2
        img = np.full((n_image, 3, 4), 1.75, dtype=np.float32)
        sink = ListSink()
        eng.run(request(MultimodalInput("<image>x", img, image_width=336, image_height=224)),
                sink)
        assert sink.finish.reason == "stop"
        rec = rt.rec()
        assert rec["run.mm_prompt"] == "<image>x" and rec["run.mm_n_image_tokens"] == "3"
        assert float(rec["run.mm_image_first"]) == 1.75
        if spec.multimodal != "basic":
            assert (rec["run.mm_n_image"], rec["run.mm_image_width"],
                    rec["run.mm_image_height"]) == ("2", "336", "224")
        else:
            assert "run.mm_n_image" not in rec
    finally:
        eng.close()


def _embed_batch(eng: Any, n: int) -> ListSink:
    seqs = tuple((i + 1, i + 2, i + 3) for i in range(n))
    sink = ListSink()
    eng.run(request(TokenBatchInput(seqs), mode=InferMode.LAST_HIDDEN_LAYER), sink)
    return sink


@pytest.mark.parametrize("family", ["1.2.0", "1.3"])
def test_async_tasks_wait_for_the_runtime_to_be_idle(family: str, make_engine: Any,
                                                     rt: Any) -> None:
    eng = make_engine(RuntimeConfig(is_async=True))
    rt.script("U:15;H:0:4;F")  # each task unwinds 15 ms after its FINISH
    for _ in range(3):
        sink = _embed_batch(eng, 16)
        assert sink.finish.reason == "stop"
        assert sum(1 for e in sink.events if type(e).__name__ == "HiddenStateEvent") == 16
    assert "run.refused" not in rt.rec()
    # a stop through the callback's return value (1.2.1+) or an abort (older) leaves the
    # same window: the next task still starts only after the runtime is idle
    rt.script("U:15;N:61:1;N:62:2;N:63:3;F")
    first = ListSink(stop_after=1)
    eng.run(request(PromptInput("a")), first)
    assert first.text == "a"
    second = ListSink()
    eng.run(request(PromptInput("b")), second)
    assert second.text == "abc" and "run.refused" not in rt.rec()


@pytest.mark.parametrize("family", ["1.2.1"])
def test_without_the_wait_the_fixture_refuses_overlap(family: str, make_engine: Any, rt: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(RuntimeConfig(is_async=True))
    monkeypatch.setattr(Handle, "wait_runtime_idle", lambda self, limit=0.0: False)
    rt.script("U:50;H:0:4;F")
    sink = _embed_batch(eng, 4)
    assert isinstance(sink.error, GenerationError)
    assert "rkllm_run_async returned -1" in str(sink.error)
    assert rt.rec().get("run.refused") == "1"


@pytest.mark.parametrize("family", ["1.1"])
def test_a_runtime_that_cannot_say_retries_for_a_bounded_time(family: str, make_engine: Any,
                                                              rt: Any) -> None:
    eng = make_engine(RuntimeConfig(is_async=True))
    eng._handle.idle_value = None  # as if rkllm_is_running were missing
    rt.script("U:20;H:0:4;F")
    sink = _embed_batch(eng, 6)
    assert sink.finish.reason == "stop"
    refused = [v for k, v in rt.record() if k == "run.refused"]
    assert refused  # the fixture did refuse early starts, and the retries got through


def test_sampling_fields_come_from_one_list() -> None:
    from rkllm_core.config import SamplingParams
    from rkllm_core.npu.abi import SAMPLING_FIELD_NAMES

    per_run = [name for name, _ in ffi_for("1.3").typeof("RKLLMSamplingParam").fields]
    assert per_run == list(SAMPLING_FIELD_NAMES)
    for layout in ("1.1", "1.2.0", "1.2.1b1", "1.2.1", "1.3"):
        init = [name for name, _ in ffi_for(layout).typeof("RKLLMParam").fields]
        assert set(SAMPLING_FIELD_NAMES) <= set(init), layout
    assert set(SAMPLING_FIELD_NAMES) <= set(RuntimeConfig.model_fields)
    assert set(SAMPLING_FIELD_NAMES) <= set(SamplingParams.model_fields)
