"""NPUEngine through real FFI against the fake runtime test fixture, for every ABI family."""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkllm_core.config import RuntimeConfig
from rkllm_core.engine import (
    EmbedInput,
    HiddenStateEvent,
    InferMode,
    LogitsEvent,
    MultimodalInput,
    PromptInput,
    TokenBatchInput,
    TokenEvent,
    TokenInput,
)
from rkllm_core.errors import (
    ConfigError,
    ContextLengthError,
    GenerationError,
    ModelFormatError,
    ModelNotFoundError,
    RuntimeLibraryError,
    RuntimeVersionError,
    UnsupportedFeatureError,
)
from rkllm_core.npu.abi import SPECS

from .conftest import FakeRuntime, ListSink, request
from .rkllm_writer import write_model

FULL_CONFIG = RuntimeConfig(
    max_context_len=3000, max_new_tokens=77, top_k=5, top_p=0.7, temperature=0.6,
    repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.4, mirostat=2,
    mirostat_tau=4.5, mirostat_eta=0.15, n_keep=12, skip_special_token=False,
    ignore_eos_token=True, is_async=False, img_start="<img>", img_end="</img>",
    img_content="<pad>", base_domain_id=3, embed_flash=True, enabled_cpus=(4, 5, 6, 7),
    n_batch=2, use_cross_attn=True,
)


def f32(x: float) -> float:
    return float(np.float32(x))


def run(engine: Any, item: Any, sink: ListSink | None = None, **kw: Any) -> ListSink:
    sink = sink or ListSink()
    engine.run(request(item, engine.config, **kw), sink)
    return sink


# --- init parameters -------------------------------------------------------------------


def test_every_runtime_config_field_round_trips(rt: FakeRuntime, make_engine: Any,
                                                model_file: Path) -> None:
    make_engine(FULL_CONFIG)
    rec = rt.rec()
    spec = SPECS[rt.family]
    c = FULL_CONFIG
    assert rec["init.model_path"] == str(model_file.resolve())
    assert int(rec["init.max_context_len"]) == c.max_context_len
    assert int(rec["init.max_new_tokens"]) == c.max_new_tokens
    assert int(rec["init.top_k"]) == c.top_k
    for name in ("top_p", "temperature", "repeat_penalty", "frequency_penalty",
                 "presence_penalty", "mirostat_tau", "mirostat_eta"):
        assert f32(float(rec[f"init.{name}"])) == f32(getattr(c, name)), name
    assert int(rec["init.mirostat"]) == c.mirostat
    assert rec["init.skip_special_token"] == "0"
    assert rec["init.is_async"] == "0"
    assert int(rec["init.base_domain_id"]) == 3
    assert rec["init.reserved_nonzero"] == "0"
    if spec.n_keep:
        assert int(rec["init.n_keep"]) == 12
    else:
        assert "init.n_keep" not in rec
    if spec.ignore_eos_token:
        assert rec["init.ignore_eos_token"] == "1"
    if spec.img_fields_in_param:
        assert (rec["init.img_start"], rec["init.img_end"], rec["init.img_content"]) == (
            "<img>", "</img>", "<pad>")
    else:
        assert "init.img_start" not in rec
    if spec.extend_cpus:
        assert rec["init.embed_flash"] == "1"
        assert rec["init.enabled_cpus_num"] == "4"
        assert int(rec["init.enabled_cpus_mask"]) == 0xF0
    if spec.extend_batch:
        assert rec["init.n_batch"] == "2"
        assert rec["init.use_cross_attn"] == "1"
    if spec.callback_struct:
        assert rec["init.callback_struct"] == "1"
        assert rec["init.tokenizer_callback_null"] == "1"
        assert rec["init.embed_callback_null"] == "1"


def test_booleans_and_defaults_the_other_way(rt: FakeRuntime, make_engine: Any) -> None:
    make_engine(RuntimeConfig(skip_special_token=True, is_async=True, n_batch=1))
    rec = rt.rec()
    assert rec["init.skip_special_token"] == "1"
    assert rec["init.is_async"] == "1"
    # createDefaultParam's distinct values must all have been overridden
    assert int(rec["init.max_context_len"]) == 4096 and int(rec["init.top_k"]) == 1


def test_raw_prompt_mode_at_init(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rec = rt.rec()
    if SPECS[rt.family].chat_template:
        assert (rec["chat_template.system"], rec["chat_template.prefix"],
                rec["chat_template.postfix"]) == ("", "", "")
        assert eng.info.raw_prompt is True
    else:
        assert "chat_template.system" not in rec
        # 1.1: prompts are sent as tokens, which bypasses the built-in template
        rt.reset()
        run(eng, PromptInput("hello"))
        assert rt.rec()["run.input_type"] == "1"
        assert rt.rec()["run.tokens"] == str(eng.tokenizer.encode("hello")[0])


def test_init_failure_is_typed(rt: FakeRuntime, make_engine: Any) -> None:
    rt.lib.fake_rkllm_set_init_rc(-1)
    with pytest.raises(RuntimeLibraryError, match=r"rkllm_init failed \(returned -1\)"):
        make_engine()
    assert rt.rec()["init.failed"] == "-1"


def test_info(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(max_context_len=2048))
    info = eng.info
    assert info.backend == "npu" and info.family == rt.family
    assert info.architecture == "qwen2" and info.hidden_size == 4
    assert info.context_length == 2048 and info.platform == "RK3588"
    assert info.eos_token == "<|im_end|>" and info.template_parts is not None
    assert info.runtime_version == eng.runtime.identity.sdk_version
    assert eng.tokenizer is not None and info.tokenizer == "rkllm:gpt2"


# --- per-run parameters -----------------------------------------------------------------


def test_every_run_parameter_round_trips(rt: FakeRuntime, make_engine: Any,
                                         tmp_path: Path) -> None:
    eng = make_engine(FULL_CONFIG)
    spec = SPECS[rt.family]
    lora = tmp_path / "adapter.rkllm"
    lora.write_bytes(b"lora")
    eng.load_lora(str(lora), "style", 0.75)
    rec = rt.rec()
    assert (rec["lora.path"], rec["lora.name"], float(rec["lora.scale"])) == (
        str(lora), "style", 0.75)
    rt.reset()
    sink = run(eng, PromptInput("héllo"), role="tool", enable_thinking=True,
               lora_adapter="style", prompt_cache_path=str(tmp_path / "pc.bin"),
               save_prompt_cache=True, keep_history=True, top_k=9, top_p=0.55,
               temperature=0.25, repeat_penalty=1.05, frequency_penalty=0.125,
               presence_penalty=0.375, mirostat=1, mirostat_tau=3.5, mirostat_eta=0.05,
               max_new_tokens=33, mode=InferMode.GENERATE)
    assert sink.finish.reason == "stop"
    rec = rt.rec()
    assert rec["run.userdata"] != "0"
    assert rec["run.mode"] == "0"
    assert rec["run.lora"] == "style"
    assert rec["run.save_prompt_cache"] == "1"
    assert rec["run.prompt_cache_path"] == str(tmp_path / "pc.bin")
    if spec.chat_template:
        assert rec["run.input_type"] == "0" and rec["run.prompt"] == "héllo"
    if spec.name != "1.1":
        assert rec["run.keep_history"] == "1"
    if spec.role:
        assert rec["run.role"] == "tool" and rec["run.enable_thinking"] == "1"
    else:
        assert "run.role" not in rec
    if spec.sampling_per_run:
        assert int(rec["run.max_new_tokens"]) == 33
        assert int(rec["run.sampling.top_k"]) == 9
        assert int(rec["run.sampling.mirostat"]) == 1
        for name, value in (("top_p", 0.55), ("temperature", 0.25), ("repeat_penalty", 1.05),
                            ("frequency_penalty", 0.125), ("presence_penalty", 0.375),
                            ("mirostat_tau", 3.5), ("mirostat_eta", 0.05)):
            assert f32(float(rec[f"run.sampling.{name}"])) == f32(value), name
    else:
        assert "run.sampling.top_k" not in rec


def test_run_defaults(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    assert run(eng, TokenInput((5, 6, 7)), keep_history=False).finish.reason == "stop"
    rec = rt.rec()
    assert rec["run.tokens"] == "5,6,7"
    assert rec["run.lora"] == "<NULL>" and rec["run.prompt_cache"] == "<NULL>"
    if SPECS[rt.family].name != "1.1":
        assert rec["run.keep_history"] == "0"
    if SPECS[rt.family].role:
        assert rec["run.role"] == "user" and rec["run.enable_thinking"] == "0"
    if SPECS[rt.family].sampling_per_run:
        assert int(rec["run.max_new_tokens"]) == RuntimeConfig().max_new_tokens
        assert int(rec["run.sampling.top_k"]) == RuntimeConfig().top_k


def test_embed_and_multimodal_inputs(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(FULL_CONFIG)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5
    assert run(eng, EmbedInput(emb)).finish.reason == "stop"
    rec = rt.rec()
    assert rec["run.input_type"] == "2"
    assert rec["run.embed_n_tokens"] == "3" and float(rec["run.embed_first"]) == 0.5
    img = np.full((1, 6, 4), 2.25, dtype=np.float32)
    mm = MultimodalInput("<image>What is it?", img, image_width=392, image_height=392)
    assert run(eng, mm).finish.reason == "stop"
    rec = rt.rec()
    assert rec["run.input_type"] == "3"
    assert rec["run.mm_prompt"] == "<image>What is it?"
    assert rec["run.mm_n_image_tokens"] == "6" and float(rec["run.mm_image_first"]) == 2.25
    spec = SPECS[rt.family]
    if spec.multimodal != "basic":
        assert rec["run.mm_n_image"] == "1" and rec["run.mm_image_width"] == "392"
        assert rec["run.mm_image_height"] == "392"
    if spec.multimodal == "image_video":
        assert (rec["run.mm_image_start"], rec["run.mm_image_end"],
                rec["run.mm_image_content"]) == ("<img>", "</img>", "<pad>")
        assert rec["run.mm_video_null"] == "1"
    wrong = run(eng, EmbedInput(np.zeros((2, 5), dtype=np.float32)))
    assert isinstance(wrong.error, ConfigError)


# --- streaming --------------------------------------------------------------------------

UTF8_SCRIPTS = {
    # WAITING carries the first bytes, NORMAL the rest ("append" runtimes)
    "append": "N:48:1;W:e4bd:2;N:a0:3;W:f09f:4;W:98:5;N:80:6;N:21:7;F",
    # WAITING bytes are re-sent with the completing token ("cumulative" runtimes)
    "cumulative": "N:48:1;W:e4bd:2;N:e4bda0:3;W:f09f98:4;N:f09f9880:6;N:21:7;F",
    # partial bytes in NORMAL states, no WAITING at all
    "normal-split": "N:48:1;N:e4:2;N:bda0:3;N:f09f:4;N:9880:6;N:21:7;F",
}


@pytest.mark.parametrize("style", list(UTF8_SCRIPTS))
def test_streaming_text_exact_across_utf8_splits(rt: FakeRuntime, make_engine: Any,
                                                  style: str) -> None:
    eng = make_engine()
    rt.script(UTF8_SCRIPTS[style])
    sink = run(eng, PromptInput("hi"))
    assert sink.text == "H你😀!"
    assert all("\ufffd" not in t.text for t in sink.tokens)
    # one event per token callback, ids in order, every text whole characters
    ids = [t.token_id for t in sink.tokens]
    assert ids == [int(item.split(":")[2]) for item in UTF8_SCRIPTS[style].split(";")
                   if item[0] in "NW"]
    assert sink.finish.reason == "stop"
    assert sink.finish.completion_tokens == len(ids)


def test_null_text_and_incomplete_tail(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("N:-:1;N:61:2;W:e4:3;F")
    sink = run(eng, PromptInput("x"))
    assert sink.text == "a\ufffd"  # an unfinished character is shown, never dropped
    assert sink.tokens[-1].token_id == -1


def test_perf_stats_and_usage(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("P:12.5:7:30.25:3:512;N:61:1;N:62:2;N:63:3;F")
    end = run(eng, TokenInput((1, 2, 3, 4))).finish
    if SPECS[rt.family].perf:
        assert end.perf.prefill_ms == 12.5 and end.perf.prefill_tokens == 7
        assert end.perf.decode_ms == 30.25 and end.perf.decode_tokens == 3
        assert end.perf.memory_mb == 512.0
        assert end.prompt_tokens == 7
    else:
        assert end.perf.prefill_tokens == 0
        assert end.prompt_tokens == 4  # counted: the family reports no perf
    assert end.completion_tokens == 3


def test_async_run_from_runtime_thread(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(is_async=True))
    rt.script(UTF8_SCRIPTS["append"])
    seen: list[int] = []
    sink = ListSink(on_token=lambda n: seen.append(threading.get_ident()))
    run(eng, PromptInput("hi"), sink)
    rec = rt.rec()
    assert rec["run.async"] == "1" and rec["run.thread_differs"] == "1"
    assert sink.text == "H你😀!" and sink.finish.reason == "stop"
    assert set(seen) and threading.get_ident() not in seen
    assert not eng.is_running()


# --- stopping ---------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
def test_abort_stops_a_slow_run(rt: FakeRuntime, make_engine: Any, is_async: bool) -> None:
    eng = make_engine(RuntimeConfig(is_async=is_async))
    rt.script("Z:2000:2;F")  # 2000 tokens, 2 ms apart: 4 s unless aborted
    started = threading.Event()
    sink = ListSink(on_token=lambda n: started.set() if n >= 3 else None)
    worker = threading.Thread(target=run, args=(eng, PromptInput("go"), sink))
    t0 = time.monotonic()
    worker.start()
    assert started.wait(5)
    assert eng.is_running()
    eng.abort()
    worker.join(5)
    assert not worker.is_alive()
    assert time.monotonic() - t0 < 2.0
    assert sink.finish.reason == "abort"
    slow = int(rt.rec()["run.slow_tokens"])
    assert 3 <= slow < 2000
    assert not eng.is_running()
    # the handle still works after an abort
    rt.script("N:6f6b:1;F")
    assert run(eng, PromptInput("again")).text == "ok"


def test_sink_stop_ends_the_run_at_once(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("Z:500:1;F")
    sink = ListSink(stop_after=2)
    run(eng, PromptInput("go"), sink)
    assert len(sink.tokens) == 2  # nothing is emitted after the sink said stop
    assert sink.finish.reason == "stop"
    rec = rt.rec()
    assert int(rec["run.slow_tokens"]) < 500
    if SPECS[rt.family].callback_returns_int:
        assert rec["callback.returned"] == "1" and rec["run.paused"] == "1"
    else:
        assert rec["run.aborted"] == "1"


def test_per_run_max_new_tokens(rt: FakeRuntime, make_engine: Any,
                                caplog: pytest.LogCaptureFixture) -> None:
    eng = make_engine(RuntimeConfig(max_new_tokens=50))
    rt.script("Z:40:0;F")
    with caplog.at_level(logging.WARNING):
        sink = run(eng, PromptInput("go"), max_new_tokens=5, temperature=0.3)
        run(eng, PromptInput("go"), max_new_tokens=5, temperature=0.3)
    if SPECS[rt.family].sampling_per_run:
        # the runtime enforces it (the fixture does not, so all 40 arrive)
        assert int(rt.rec()["run.max_new_tokens"]) == 5
        assert len(sink.tokens) == 40
        assert "per-call" not in caplog.text
    else:
        assert len(sink.tokens) == 5 and sink.finish.reason == "length"
        assert caplog.text.count("takes sampling parameters only at init") == 1


def test_callback_exception_is_carried_to_the_caller(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("Z:500:1;F")
    sink = ListSink(raise_after=3)
    run(eng, PromptInput("go"), sink)
    err = sink.error
    assert isinstance(err, ValueError) and "sink failure" in str(err)
    assert int(rt.rec()["run.slow_tokens"]) < 500
    rt.script("N:6f6b:1;F")
    assert run(eng, PromptInput("again")).text == "ok"


def test_runtime_error_state_is_typed(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("N:61:1;E")
    sink = run(eng, PromptInput("go"))
    assert isinstance(sink.error, GenerationError)
    assert "RKLLM_RUN_ERROR" in str(sink.error)
    rt.script("R:-1")
    sink = run(eng, PromptInput("go"))
    assert isinstance(sink.error, GenerationError) and "returned -1" in str(sink.error)


def test_context_length_checked_before_the_runtime(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(max_context_len=8))
    rt.reset()
    sink = run(eng, TokenInput(tuple(range(9))))
    assert isinstance(sink.error, ContextLengthError)
    assert "run.handle" not in rt.rec()


# --- hidden states and logits --------------------------------------------------------------


def test_hidden_states_batch_copied_in_callback(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("H:3:4;F")
    seqs = ((1, 2, 3), (4, 5, 6, 7, 8))
    sink = run(eng, TokenBatchInput(seqs), mode=InferMode.LAST_HIDDEN_LAYER)
    states = [e for e in sink.events if isinstance(e, HiddenStateEvent)]
    assert len(states) == 2
    for seq, ev in zip(seqs, states, strict=True):
        # values written by the runtime (i * 0.25 + input length); the fixture poisons its
        # buffer after the callback, so equal values prove the copy was made inside it
        expected = (np.arange(12, dtype=np.float32) * 0.25 + len(seq)).reshape(3, 4)
        np.testing.assert_array_equal(ev.hidden, expected)
    assert not sink.tokens
    end = sink.finish
    assert end.prompt_tokens == 8 and end.completion_tokens == 0
    if SPECS[rt.family].sampling_per_run:
        assert rt.rec()["callback.returned"] == "2"  # 1.3: buffer released after the copy
    assert [r for k, r in rt.record() if k == "run.mode"] == ["1", "1"]


def test_logits(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("L:2:5;F")
    sink = run(eng, TokenInput((1, 2)), mode=InferMode.LOGITS)
    if not SPECS[rt.family].logits:
        assert isinstance(sink.error, UnsupportedFeatureError)
        return
    (ev,) = [e for e in sink.events if isinstance(e, LogitsEvent)]
    np.testing.assert_array_equal(ev.logits,
                                  (np.arange(10, dtype=np.float32) * 0.5 - 2).reshape(2, 5))
    assert rt.rec()["run.mode"] == "2"


def test_missing_hidden_states_is_an_error(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("N:61:1;F")
    sink = run(eng, TokenInput((1,)), mode=InferMode.LAST_HIDDEN_LAYER)
    assert isinstance(sink.error, GenerationError)


# --- runtime features -----------------------------------------------------------------------


def test_clear_kv_cache_signatures(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(n_batch=2))
    spec = SPECS[rt.family]
    rt.reset()
    eng.clear_kv_cache(keep_system_prompt=True)
    rec = rt.rec()
    if spec.clear_kv_cache == "none":
        assert "clear_kv_cache.keep_system_prompt" not in rec
    else:
        assert rec["clear_kv_cache.keep_system_prompt"] == "1"
    if spec.clear_kv_cache == "ranges":
        assert rec["clear_kv_cache.range"] == "NULL"
        eng.clear_kv_cache(False, [1, 4], [3, 9])
        rec = rt.rec()
        assert (rec["clear_kv_cache.range0"], rec["clear_kv_cache.range1"]) == ("1-3", "4-9")
        with pytest.raises(ConfigError):
            eng.clear_kv_cache(False, [1], [3])
    else:
        with pytest.raises(UnsupportedFeatureError, match=r"1\.2\.1"):
            eng.clear_kv_cache(False, [1, 4], [3, 9])


def test_kv_cache_size(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(n_batch=2))
    if not SPECS[rt.family].kv_cache_size:
        with pytest.raises(UnsupportedFeatureError):
            eng.kv_cache_size()
        return
    eng.clear_kv_cache()
    rt.script("N:61:1;N:62:2;N:63:3;F")
    run(eng, PromptInput("x"))
    assert eng.kv_cache_size() == [3, 4]


def test_chat_template_and_function_tools(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    spec = SPECS[rt.family]
    if not spec.chat_template:
        with pytest.raises(UnsupportedFeatureError):
            eng.set_chat_template("s", "p", "q")
    else:
        eng.set_chat_template("<sys>", "<u>", "</u><a>")
        rec = rt.rec()
        assert (rec["chat_template.system"], rec["chat_template.prefix"],
                rec["chat_template.postfix"]) == ("<sys>", "<u>", "</u><a>")
        assert eng.info.raw_prompt is False
    tools = '[{"type": "function", "function": {"name": "f", "parameters": {}}}]'
    if not spec.function_tools:
        with pytest.raises(UnsupportedFeatureError):
            eng.set_function_tools("sys", tools, "tool_response")
        return
    eng.set_function_tools("sys", tools, "tool_response")
    rec = rt.rec()
    assert (rec["function_tools.system"], rec["function_tools.tools"],
            rec["function_tools.response"]) == ("sys", tools, "tool_response")
    with pytest.raises(ConfigError):
        eng.set_function_tools("sys", "{not json", "r")


def test_lora_and_prompt_cache(rt: FakeRuntime, make_engine: Any, tmp_path: Path) -> None:
    eng = make_engine()
    sink = run(eng, PromptInput("x"), lora_adapter="unknown")
    assert isinstance(sink.error, ConfigError) and "not loaded" in str(sink.error)
    bad = tmp_path / "bad.rkllm"
    bad.write_bytes(b"x")
    with pytest.raises(RuntimeLibraryError, match="rkllm_load_lora returned -1"):
        eng.load_lora(str(bad), "b")
    with pytest.raises(ModelNotFoundError):
        eng.load_lora(str(tmp_path / "absent"), "a")
    cache = tmp_path / "cache.bin"
    cache.write_bytes(b"c")
    eng.load_prompt_cache(str(cache))
    eng.release_prompt_cache()
    rec = rt.rec()
    assert rec["prompt_cache.load"] == str(cache) and rec["prompt_cache.release"] == "1"
    with pytest.raises(ModelNotFoundError):
        eng.load_prompt_cache(str(tmp_path / "nope.bin"))


def test_cross_attn_params(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(use_cross_attn=True))
    args = (np.full(8, 1.5), np.full(8, 2.5), np.ones(3), np.arange(3))
    if not SPECS[rt.family].cross_attn:
        with pytest.raises(UnsupportedFeatureError):
            eng.set_cross_attn_params(*args)
        return
    eng.set_cross_attn_params(*args)
    rec = rt.rec()
    assert rec["cross_attn.num_tokens"] == "3"
    assert float(rec["cross_attn.k0"]) == 1.5 and float(rec["cross_attn.v0"]) == 2.5
    assert float(rec["cross_attn.mask_pos_sum"]) == 6.0


# --- handles and lifecycle ----------------------------------------------------------------


def test_two_handles_side_by_side(rt: FakeRuntime, make_engine: Any) -> None:
    before = rt.destroy_count()
    a = make_engine(RuntimeConfig(base_domain_id=1))
    b = make_engine(RuntimeConfig(base_domain_id=2))
    rec = rt.record()
    domains = [v for k, v in rec if k == "init.base_domain_id"]
    handles = [v for k, v in rec if k == "init.handle"]
    assert domains == ["1", "2"] and len(set(handles)) == 2
    results: dict[str, str] = {}

    def go(name: str, eng: Any) -> None:
        results[name] = run(eng, PromptInput(name)).text

    rt.script("Z:5:1;F")
    threads = [threading.Thread(target=go, args=(n, e)) for n, e in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == {"a": "xxxxx", "b": "xxxxx"}
    run_handles = {v for k, v in rt.record() if k == "run.handle"}
    assert run_handles == set(handles)
    a.close()
    a.close()
    b.close()
    assert rt.destroy_count() == before + 2


def test_destroyed_once_on_garbage_collection(rt: FakeRuntime, model_file: Path) -> None:
    from rkllm_core.npu.engine import NPUEngine

    before = rt.destroy_count()
    eng = NPUEngine(str(model_file), RuntimeConfig(), library=str(rt.path))
    assert run(eng, PromptInput("x")).finish.reason == "stop"
    del eng
    gc.collect()
    assert rt.destroy_count() == before + 1


def test_closed_engine_refuses_work(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    eng.close()
    sink = run(eng, PromptInput("x"))
    assert "closed" in str(sink.error)
    eng.abort()  # harmless


def test_pre_init_checks_refuse(rt: FakeRuntime, tmp_path: Path, model_file: Path) -> None:
    from rkllm_core.npu.engine import NPUEngine

    newer = write_model(tmp_path / "newer.rkllm", toolkit="9.0.0")
    with pytest.raises(RuntimeVersionError, match="newer than the RKLLM runtime"):
        NPUEngine(str(newer), RuntimeConfig(), library=str(rt.path))
    with pytest.raises(ConfigError, match="above the limit"):
        NPUEngine(str(model_file), RuntimeConfig(max_context_len=16384), library=str(rt.path))
    with pytest.raises(ModelNotFoundError):
        NPUEngine(str(tmp_path / "absent.rkllm"), RuntimeConfig(), library=str(rt.path))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(ModelFormatError, match="PC engine"):
        NPUEngine(str(gguf), RuntimeConfig(), library=str(rt.path))
    assert "init.handle" not in rt.rec()  # nothing reached rkllm_init


def test_hf_tokenizer_option(rt: FakeRuntime, make_engine: Any, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    eng = make_engine(tokenizer=str(tmp_path))
    assert eng.tokenizer.encode("hello world") == [1, 2]
    assert eng.info.tokenizer.startswith("hf:")
    with pytest.raises(ModelNotFoundError):
        make_engine(tokenizer=str(tmp_path / "missing"))


def test_warns_on_features_the_family_lacks(rt: FakeRuntime, make_engine: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        make_engine(RuntimeConfig(n_batch=2, ignore_eos_token=True))
    spec = SPECS[rt.family]
    if not spec.extend_batch:
        assert "n_batch" in caplog.text
    if not spec.ignore_eos_token:
        assert "ignore_eos_token" in caplog.text
    if spec.name == "1.3":
        assert "ignored" not in caplog.text


def test_token_events_are_token_events(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    rt.script("N:61:11;N:62:12;F")
    sink = run(eng, PromptInput("x"))
    assert [(e.text, e.token_id) for e in sink.tokens] == [("a", 11), ("b", 12)]
    assert all(isinstance(e, TokenEvent) for e in sink.tokens)


def test_async_abort_without_finish_callback(rt: FakeRuntime, make_engine: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that never calls back after an abort must not hang the caller."""
    monkeypatch.setattr("rkllm_core.npu.engine._STOP_GRACE_S", 0.2)
    eng = make_engine(RuntimeConfig(is_async=True))
    rt.script("X;Z:2000:2;F")
    sink = ListSink(stop_after=3)
    t0 = time.monotonic()
    run(eng, PromptInput("go"), sink)
    assert time.monotonic() - t0 < 2.0
    assert len(sink.tokens) == 3 and sink.finish.reason == "stop"
    time.sleep(0.05)
    rec = rt.rec()
    assert "callback.returned" in rec or rec.get("run.aborted") == "1"
    # late callbacks of that run are ignored; the next run is clean
    rt.script("N:6f6b:1;F")
    assert run(eng, PromptInput("again")).text == "ok"


def test_async_sink_stop_returns_promptly(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine(RuntimeConfig(is_async=True))
    rt.script("Z:2000:2;F")
    t0 = time.monotonic()
    sink = run(eng, PromptInput("go"), ListSink(stop_after=2))
    assert time.monotonic() - t0 < 1.0  # no waiting out the stop grace period
    assert len(sink.tokens) == 2 and sink.finish.reason == "stop"


def test_close_during_a_run(rt: FakeRuntime, make_engine: Any) -> None:
    eng = make_engine()
    before = rt.destroy_count()
    rt.script("Z:2000:2;F")
    started = threading.Event()
    sink = ListSink(on_token=lambda n: started.set())
    worker = threading.Thread(target=run, args=(eng, PromptInput("go"), sink))
    worker.start()
    assert started.wait(5)
    eng.close()  # aborts, waits for the run to end, then destroys
    worker.join(5)
    assert not worker.is_alive()
    assert sink.finish.reason == "abort"
    assert rt.destroy_count() == before + 1
    eng.close()
    assert rt.destroy_count() == before + 1


def test_engine_protocol_and_missing_library(make_engine: Any, model_file: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from rkllm_core.engine import Engine
    from rkllm_core.errors import EngineUnavailableError
    from rkllm_core.npu.engine import NPUEngine

    assert isinstance(make_engine(), Engine)
    monkeypatch.setattr("rkllm_core.npu.library.SYSTEM_DIRS", (str(tmp_path),))
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    with pytest.raises(EngineUnavailableError, match="PC engine"):
        NPUEngine(str(model_file), RuntimeConfig())
