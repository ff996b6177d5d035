"""RKLLMModel on the PC engine with a tiny random-weight Llama (no download)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rkllm_core import (
    ConfigError,
    ContextLengthError,
    ModelClosedError,
    ModelNotFoundError,
    RKLLMModel,
    RuntimeConfig,
    SamplingParams,
)
from rkllm_core.pc.detokenize import IncrementalDecoder
from rkllm_core.pc.sampling import Sampler, apply_penalties

GREEDY = {"top_k": 1, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    m = RKLLMModel(tiny_model_dir, RuntimeConfig(max_context_len=256, max_new_tokens=16))
    yield m
    m.close()


def test_info_describes_the_model(model: RKLLMModel) -> None:
    assert model.backend == "pc"
    assert model.info.architecture == "llama"
    assert model.info.hidden_size == 64
    assert model.info.context_length == 512
    assert model.info.chat_template and "im_start" in model.info.chat_template


def test_greedy_equals_argmax_of_logits(model: RKLLMModel) -> None:
    prompt = "The quick brown fox"
    expected = int(np.argmax(model.logits(prompt)[-1]))
    result = model.generate(prompt, max_new_tokens=1, **GREEDY)
    assert result.token_ids[0] == expected


def test_generate_equals_joined_stream_and_reports_usage(model: RKLLMModel) -> None:
    stream = model.stream("Hello world", max_new_tokens=12, **GREEDY)
    pieces = [chunk.text for chunk in stream]
    result = stream.result
    again = model.generate("Hello world", max_new_tokens=12, **GREEDY)
    assert "".join(pieces) == result.text == again.text
    # the prompt is counted as the engine tokenized it (with BOS where the tokenizer adds one)
    assert result.usage.prompt_tokens == len(model.tokenize("Hello world", True))
    # a sampled EOS counts as generated but has no text
    assert len(result.token_ids) <= result.usage.completion_tokens <= len(result.token_ids) + 1
    assert result.perf.prefill_ms > 0
    assert result.perf.decode_tokens == result.usage.completion_tokens


def test_penalties_follow_llama_cpp_rules() -> None:
    params = SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    resolved = params.resolve(RuntimeConfig())
    logits = torch.tensor([4.0, -4.0, 1.0, 3.0])
    out = apply_penalties(logits, [0, 1, 1], resolved)
    assert out[0].item() == pytest.approx(4.0 / 2 - 0.5 - 0.25)
    assert out[1].item() == pytest.approx(-4.0 * 2 - 2 * 0.5 - 0.25)
    assert out[2:].tolist() == [1.0, 3.0]  # untouched


def test_repeat_penalty_changes_greedy_choice() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0])
    plain = Sampler(SamplingParams(top_k=1, repeat_penalty=1.0).resolve(RuntimeConfig()), 3)
    penal = Sampler(SamplingParams(top_k=1, repeat_penalty=1.5).resolve(RuntimeConfig()), 3)
    assert plain(logits, [0]) == 0
    assert penal(logits, [0]) == 1


def test_top_k_and_top_p_restrict_the_draw() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0, -2.0])
    cfg = RuntimeConfig()
    top2 = Sampler(SamplingParams(top_k=2, top_p=1.0, temperature=5.0, seed=1).resolve(cfg), 5)
    assert {top2(logits, []) for _ in range(200)} == {0, 1}
    nucleus = Sampler(SamplingParams(top_k=0, top_p=0.5, temperature=1.0, seed=1).resolve(cfg), 5)
    assert {nucleus(logits, []) for _ in range(50)} == {0}


def test_mirostat_v2_keeps_surprise_near_tau() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1000)  # high entropy: truncation decides the surprise
    params = SamplingParams(mirostat=2, mirostat_tau=7.0, mirostat_eta=0.2, seed=3,
                            repeat_penalty=1.0).resolve(RuntimeConfig())
    sampler = Sampler(params, 1000)
    probs = torch.softmax(logits, -1)
    surprises = [-float(torch.log2(probs[sampler(logits, [])])) for _ in range(400)]
    assert abs(np.mean(surprises[100:]) - 7.0) < 1.0
    assert len(set(surprises)) > 10  # it samples, not argmax


def test_seed_reproduces_and_differs(model: RKLLMModel) -> None:
    kwargs = {"top_k": 0, "top_p": 1.0, "temperature": 1.5, "max_new_tokens": 12}
    a = model.generate("Rockchip", seed=7, **kwargs).token_ids
    b = model.generate("Rockchip", seed=7, **kwargs).token_ids
    c = model.generate("Rockchip", seed=8, **kwargs).token_ids
    assert a == b
    assert a != c


def test_prompt_too_long_says_how_many_tokens(tiny_model_dir: Path) -> None:
    with RKLLMModel(tiny_model_dir, RuntimeConfig(max_context_len=16)) as small:
        with pytest.raises(ContextLengthError) as info:
            small.generate("The quick brown fox jumps over the lazy dog. " * 4)
        assert info.value.prompt_tokens > 16
        assert "only 15 fit" in str(info.value)
        # the model is still usable afterwards
        assert small.generate("Hi", max_new_tokens=2).usage.completion_tokens >= 1


def test_generation_past_the_window_shifts_with_n_keep(tiny_model_dir: Path) -> None:
    cfg = RuntimeConfig(max_context_len=32, n_keep=4, ignore_eos_token=True, repeat_penalty=1.0)
    with RKLLMModel(tiny_model_dir, cfg) as small:
        result = small.generate("Hello world", max_new_tokens=60)
        assert result.finish_reason == "length"
        assert result.usage.completion_tokens == 60


def test_stop_string_cuts_the_text(model: RKLLMModel) -> None:
    full = model.generate("The quick", max_new_tokens=16, **GREEDY).text
    assert len(full) > 6
    stop = full[3:6]
    cut = model.generate("The quick", max_new_tokens=16, stop=[stop], **GREEDY)
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_incremental_decoder_releases_whole_characters(model: RKLLMModel) -> None:
    text = "日本語のテキスト 🎉🚀 Grüße ∑"
    ids = model.tokenize(text)
    assert len(ids) > len(text) / 2  # the tiny vocabulary splits characters into bytes
    decoder = IncrementalDecoder(model.tokenizer, skip_special_tokens=True)
    pieces = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == text
    assert any(p == "" for p in pieces)  # some tokens ended inside a character


def test_streamed_text_matches_decoded_tokens(model: RKLLMModel) -> None:
    stream = model.stream("日本語", max_new_tokens=16, **GREEDY)
    pieces = [c.text for c in stream]
    result = stream.result
    decoded = model.detokenize(result.token_ids, skip_special_tokens=True)
    assert "".join(pieces) == decoded.rstrip("\ufffd")


def test_abort_stops_only_that_request(model: RKLLMModel) -> None:
    stream = model.stream("Hello", max_new_tokens=200, top_k=1)
    other = model.stream("Rockchip", max_new_tokens=5, top_k=1)  # queued behind it
    count = 0
    for _ in stream:
        count += 1
        if count == 3:
            stream.abort()
    result = stream.result
    assert result.finish_reason == "abort"
    # tokens that end inside a UTF-8 character yield no chunk, so allow a few more
    assert result.usage.completion_tokens < 20
    assert other.result.finish_reason in ("length", "stop")


def test_abort_from_another_thread(tiny_model_dir: Path) -> None:
    cfg = RuntimeConfig(ignore_eos_token=True, max_new_tokens=100000, max_context_len=512)
    with RKLLMModel(tiny_model_dir, cfg) as m:
        stream = m.stream("Hello")
        timer = threading.Timer(0.3, m.abort)
        timer.start()
        result = stream.result
        assert result.finish_reason == "abort"
        assert result.usage.completion_tokens < 100000


def test_breaking_out_of_a_stream_frees_the_model(model: RKLLMModel) -> None:
    for _ in model.stream("Hello", max_new_tokens=300, top_k=1):
        break
    start = time.perf_counter()
    assert model.generate("Hi", max_new_tokens=2).usage.completion_tokens >= 1
    assert time.perf_counter() - start < 30


def test_user_exception_inside_loop_leaves_model_usable(model: RKLLMModel) -> None:
    with pytest.raises(RuntimeError, match="user bug"):
        for _ in model.stream("Hello", max_new_tokens=300, top_k=1):
            raise RuntimeError("user bug")
    assert model.generate("Hi", max_new_tokens=2).finish_reason in ("length", "stop")


def test_eight_threads_each_get_their_own_answer(model: RKLLMModel) -> None:
    prompts = [f"Prompt number {i}: the fox" for i in range(8)]
    expected = {p: model.generate(p, max_new_tokens=8, **GREEDY).text for p in prompts}
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(prompt: str) -> None:
        try:
            results[prompt] = model.generate(prompt, max_new_tokens=8, **GREEDY).text
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == expected
    assert len(set(expected.values())) > 1  # the prompts really lead to different answers


def test_keep_history_on_and_off(model: RKLLMModel) -> None:
    model.clear_kv_cache()
    chat = [{"role": "user", "content": "Hello"}]
    first = model.generate(chat, keep_history=True, max_new_tokens=4, **GREEDY)
    held = model.kv_cache_size()[0]
    assert held >= first.usage.prompt_tokens
    follow = [*chat, {"role": "assistant", "content": first.text},
              {"role": "user", "content": "More"}]
    second = model.generate(follow, keep_history=True, max_new_tokens=4, **GREEDY)
    full_prompt_tokens = model.count_tokens(follow)
    assert second.usage.prompt_tokens < full_prompt_tokens  # only the new turn was sent
    assert model.kv_cache_size()[0] > held
    model.generate("stateless", max_new_tokens=2)
    assert model.kv_cache_size()[0] == 0  # keep_history=False starts (and ends) fresh
    model.clear_kv_cache()
    assert model.kv_cache_size() == [0]


def test_hidden_states_shape_and_pooling(model: RKLLMModel) -> None:
    text = "The quick brown fox"
    hidden = model.hidden_states(model.tokenize(text))
    assert hidden.shape == (len(model.tokenize(text)), 64)
    raw = {"strategy": "plain", "normalize": False, "center": False}
    mean = model.embed([text], pooling="mean", **raw)[0]
    last = model.embed([text], pooling="last", **raw)[0]
    np.testing.assert_allclose(mean, hidden.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last, hidden[-1], rtol=1e-4, atol=1e-5)
    unit = model.embed([text, "dog"])
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_batched_embedding_equals_one_by_one(model: RKLLMModel) -> None:
    texts = ["a", "The quick brown fox jumps", "Grüße", "NPU runs models on the board", ""]
    for strategy in ("plain", "prompteol", "echo"):
        batched = model.embed(texts, strategy=strategy, batch_size=8)
        single = np.stack([model.embed([t], strategy=strategy)[0] for t in texts])
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_query_instruction_changes_only_queries(model: RKLLMModel) -> None:
    doc = model.embed(["fox"], query_instruction="Query: ")
    query = model.embed(["fox"], query_instruction="Query: ", is_query=True)
    assert not np.allclose(doc, query)


async def test_astream_does_not_block_the_loop(tiny_model_dir: Path) -> None:
    cfg = RuntimeConfig(ignore_eos_token=True, max_new_tokens=40)
    with RKLLMModel(tiny_model_dir, cfg) as m:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        stream = m.astream("Hello", top_k=1)
        pieces = [c.text async for c in stream]
        result = await stream.aresult()
        done.set()
        await task
        assert result.usage.completion_tokens == 40
        assert "".join(pieces) == result.text
        assert ticks > 5


async def test_async_tasks_queue_in_order(model: RKLLMModel) -> None:
    prompts = [f"task {i}" for i in range(4)]
    expected = [model.generate(p, max_new_tokens=6, **GREEDY).text for p in prompts]
    got = await asyncio.gather(*(model.agenerate(p, max_new_tokens=6, **GREEDY) for p in prompts))
    assert [r.text for r in got] == expected


async def test_cancelling_an_async_task_aborts_its_request(tiny_model_dir: Path) -> None:
    cfg = RuntimeConfig(ignore_eos_token=True, max_new_tokens=100000)
    with RKLLMModel(tiny_model_dir, cfg) as m:
        task = asyncio.create_task(m.agenerate("Hello", top_k=1))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await m.agenerate("Hi", max_new_tokens=3)
        assert result.usage.completion_tokens == 3


def test_close_twice_and_use_after_close(tiny_model_dir: Path) -> None:
    m = RKLLMModel(tiny_model_dir)
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(ModelClosedError):
        m.generate("Hi")


def test_bad_input_errors(model: RKLLMModel, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sampling"):
        model.generate("Hi", temprature=0.5)
    with pytest.raises(ConfigError, match="empty"):
        model.generate([])
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        RKLLMModel(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match=r"NPU engine runs \.rkllm"):
        RKLLMModel(model.info.model_path, backend="npu")
