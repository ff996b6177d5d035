"""The PC engine on llama.cpp's kernels (kernels="llama.cpp") against the default torch kernels.

llama.cpp multiplies on the GGUF's quantized blocks (and quantizes activations for it), so its
logits are close to the float32 engine's, not equal: the checks are agreement measures with
bounds a broken forward pass (wrong positions, a stale cache, swapped rows, the hidden state
before the final norm) fails by far. Everything else — sampler, stop rules, history, prefix
reuse, cancellation — is the engine's own and is checked to behave as with torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from rkllm_core import (
    ConfigError,
    ModelClosedError,
    RKLLMModel,
    RuntimeConfig,
    SamplingParams,
    fetch_model,
)
from rkllm_core.engine import EmbedInput, FinishEvent, Request, TokenEvent

pytest.importorskip(
    "llama_cpp",
    reason="the llama.cpp kernels are an optional extra: pip install 'rkllm-py[llamacpp]'",
)

pytestmark = pytest.mark.integration

PROMPTS = [
    [{"role": "user", "content": "Write a python function that reverses a list."}],
    [{"role": "user", "content": "Name three rivers in Europe and where they flow."}],
    "Rockchip's NPU runs language models on a board; the PC engine",
    [{"role": "user", "content": "Context: The Danube flows through Vienna, Budapest and"
      " Belgrade before reaching the Black Sea.\nQuestion: Which cities does the Danube flow"
      " through? Quote the context."}],
    [{"role": "user", "content": "Explain what a hash table is to a beginner."}],
    [{"role": "user", "content": "Give me a recipe for pancakes."}],
    "The history of the printing press begins",
    [{"role": "user", "content": "What is the capital of Australia and why was it chosen?"}],
]
GREEDY = {"top_k": 1, "repeat_penalty": 1.0}
CFG = RuntimeConfig(max_context_len=512, ignore_eos_token=True)

# Bounds below the figures measured with llama-cpp-python 0.3.36 on SmolLM2 Q4_1 (in brackets).
AGREE_TOTAL = 200  # greedy tokens agreeing with torch before the first difference, 8 × 32 [232]
AGREE_MIN = 4  # … on the prompt that diverges first [8; the others all 32]
TOP1_MIN = 0.9  # positions whose top token agrees [0.98 of 50]
LOGITS_COSINE_MIN = 0.995  # mean-centred logits, worst position [0.9989]
HIDDEN_COSINE_MIN = 0.99  # last hidden layer, worst position [0.9978]
EMBED_COSINE_MIN = 0.995  # pooled, normalised embeddings [0.9987]


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, RKLLMModel]]:
    path = fetch_model("smollm2")
    pair = {"torch": RKLLMModel(path, CFG), "llama.cpp": RKLLMModel(path, CFG, kernels="llama.cpp")}
    yield pair
    for model in pair.values():
        model.close()


def _agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_info_names_the_kernels(models: dict[str, RKLLMModel]) -> None:
    ours, ref = models["llama.cpp"].info, models["torch"].info
    assert ours.extra["kernels"] == "llama.cpp" and ours.extra["decoder"] == "llama.cpp"
    assert ref.extra["kernels"] == "torch"
    for field in ("architecture", "hidden_size", "vocab_size", "num_layers", "context_length",
                  "eos_token", "bos_token", "chat_template", "quantization"):
        assert getattr(ours, field) == getattr(ref, field), field
    text = "Héllo wörld: the tokenizer is the engine's, whatever the kernels"
    assert models["llama.cpp"].tokenize(text, True) == models["torch"].tokenize(text, True)


def test_greedy_text_follows_the_float_engine(models: dict[str, RKLLMModel]) -> None:
    """Greedy tokens agree with the torch engine's for a long stretch (until two candidates
    are closer than the quantized arithmetic's error)."""
    runs = {
        name: [m.generate(p, max_new_tokens=32, **GREEDY).token_ids for p in PROMPTS]
        for name, m in models.items()
    }
    agree = [_agreeing_prefix(a, b) for a, b in zip(runs["torch"], runs["llama.cpp"], strict=True)]
    assert all(len(ids) == 32 for ids in runs["llama.cpp"])
    assert sum(agree) >= AGREE_TOTAL, agree
    assert min(agree) >= AGREE_MIN, agree


@pytest.mark.slow
def test_qwen_coder_greedy_text_follows_the_float_engine() -> None:
    """The second architecture (Qwen2, Q4_K_M blocks): the same agreement measure."""
    path = fetch_model("qwen2.5-coder-0.5b")
    runs = {}
    for kernels in ("torch", "llama.cpp"):
        with RKLLMModel(path, CFG, kernels=kernels) as model:
            assert model.info.extra["kernels"] == kernels
            runs[kernels] = [
                model.generate(p, max_new_tokens=32, **GREEDY).token_ids for p in PROMPTS[:4]
            ]
    agree = [_agreeing_prefix(a, b) for a, b in zip(runs["torch"], runs["llama.cpp"], strict=True)]
    # measured [3, 32, 32, 32]: the first prompt meets a near-tie at its fourth token
    assert sum(agree) >= 80 and min(agree) >= 1, agree


def test_logits_rank_like_the_float_engine(models: dict[str, RKLLMModel]) -> None:
    """On a text written by people, the top token agrees at most positions and the logits are
    nearly collinear."""
    text = (
        "The lighthouse stood on a rock at the mouth of the harbour. Every night the keeper"
        " climbed the spiral stairs, trimmed the wick and wound the clockwork that turned the"
        " great lens, so that ships far out at sea could count the flashes and know where"
    )
    ours, ref = models["llama.cpp"].logits(text), models["torch"].logits(text)
    assert ours.shape == ref.shape
    top1 = float(np.mean(ours.argmax(-1) == ref.argmax(-1)))
    cosine = _row_cosines(ours - ours.mean(-1, keepdims=True), ref - ref.mean(-1, keepdims=True))
    assert top1 >= TOP1_MIN, top1
    assert cosine.min() >= LOGITS_COSINE_MIN, cosine.min()


def test_hidden_states_match_after_the_final_norm(models: dict[str, RKLLMModel]) -> None:
    """Hidden states follow the torch engine's convention (after the final norm): close in
    direction row by row, and so are the pooled embeddings built on them."""
    text = "Retrieval-augmented generation looks up passages before it answers."
    ours, ref = models["llama.cpp"].hidden_states(text), models["torch"].hidden_states(text)
    assert ours.shape == ref.shape == (len(models["torch"].tokenize(text, True)), 576)
    assert _row_cosines(ours, ref).min() >= HIDDEN_COSINE_MIN
    docs = ["The Danube flows into the Black Sea.", "A lighthouse keeper trims the wick.",
            "Python lists can be reversed with slicing."]
    emb_ours, emb_ref = models["llama.cpp"].embed(docs), models["torch"].embed(docs)
    assert _row_cosines(emb_ours, emb_ref).min() >= EMBED_COSINE_MIN
    # the ranking a retriever would make is the same
    query = models["torch"].embed("Which river reaches the Black Sea?", is_query=True)
    query_ours = models["llama.cpp"].embed("Which river reaches the Black Sea?", is_query=True)
    assert int(np.argmax(emb_ref @ query[0])) == int(np.argmax(emb_ours @ query_ours[0]))


def test_prefix_reuse_gives_the_logits_of_a_fresh_prefill(models: dict[str, RKLLMModel]) -> None:
    """Truncating llama.cpp's cache and forwarding a new suffix gives exactly the logits of an
    empty cache fed the same chunks, and those of a one-batch prefill to rounding; positions
    left behind would change them by far."""
    model = models["llama.cpp"]
    first = model.tokenize(model.render_chat(PROMPTS[1]), True)
    second = model.tokenize(model.render_chat(PROMPTS[3]), True)
    shared = _agreeing_prefix(first, second)
    assert 3 < shared < len(second) - 1
    engine = model._engine

    def last_logits(*steps: list[int] | int) -> np.ndarray:
        engine._reset_cache()
        for step in steps:
            if isinstance(step, int):
                engine._cache.truncate(step)
            else:
                out = engine._forward(step).numpy()
        engine._reset_cache()
        return out

    with torch.inference_mode():
        reused = last_logits(first, shared, second[shared:])
        fresh = last_logits(second[:shared], second[shared:])
        stale = last_logits(first, second[shared:])  # the bug truncation prevents
        one_batch = last_logits(second)
    np.testing.assert_array_equal(reused, fresh)
    assert np.abs(stale - fresh).max() > 1.0
    # with flash attention off, how a prompt is split hardly changes its logits [0.0 here]
    assert np.abs(one_batch - fresh).max() < 0.25
    assert int(one_batch.argmax()) == int(fresh.argmax())


def test_requests_sharing_a_system_prompt_reuse_it(models: dict[str, RKLLMModel]) -> None:
    """As in the framework suites: the shared prefix is not prefilled again, and the tokens
    are those of requests that each start from an empty cache."""
    system = {"role": "system", "content": "You answer questions about European geography."
              " Keep answers short and name the countries involved."}
    prompts = [[system, {"role": "user", "content": q}]
               for q in ("Which rivers cross Germany?", "Where is the Danube's source?")]
    model = models["llama.cpp"]
    model.clear_kv_cache()
    reusing = [model.generate(p, max_new_tokens=16, **GREEDY) for p in prompts]
    fresh = []
    for p in prompts:
        model.clear_kv_cache()
        fresh.append(model.generate(p, max_new_tokens=16, **GREEDY))
    assert [r.token_ids for r in reusing] == [r.token_ids for r in fresh]
    assert reusing[1].usage.prompt_tokens - reusing[1].perf.prefill_tokens > 20
    assert fresh[1].perf.prefill_tokens == fresh[1].usage.prompt_tokens


def test_guessing_is_off_by_default(models: dict[str, RKLLMModel]) -> None:
    """llama.cpp pays per row and rounds multi-row batches differently at some lengths, so
    greedy decoding forwards one token per step (torch keeps its lookahead)."""
    assert models["llama.cpp"]._engine._lookahead == 0
    assert models["torch"]._engine._lookahead == 4


def test_history_and_sampling_are_the_engines(models: dict[str, RKLLMModel]) -> None:
    model = models["llama.cpp"]
    model.clear_kv_cache()
    a = model.generate("Once upon a time", max_new_tokens=8, temperature=0.8, seed=7)
    b = model.generate("Once upon a time", max_new_tokens=8, temperature=0.8, seed=7)
    assert a.token_ids == b.token_ids  # a seed fixes a sampled reply
    model.generate("My name is Ada.", max_new_tokens=4, keep_history=True, **GREEDY)
    held = model.kv_cache_size()[0]
    assert held >= len(model.tokenize("My name is Ada.", True)) + 4 - 1
    model.generate(" And yours?", max_new_tokens=4, keep_history=True, **GREEDY)
    assert model.kv_cache_size()[0] > held
    model.clear_kv_cache()
    assert model.kv_cache_size() == [0]


def test_abort_stops_the_request(models: dict[str, RKLLMModel]) -> None:
    model = models["llama.cpp"]
    stream = model.stream("Tell me a long story.", max_new_tokens=400, **GREEDY)
    for count, _ in enumerate(stream, start=1):
        if count == 3:
            stream.abort()
    result = stream.result
    assert result.finish_reason == "abort"
    assert result.usage.completion_tokens < 20
    after = model.generate("Hello", max_new_tokens=3, **GREEDY)
    assert after.finish_reason == "length" and len(after.token_ids) == 3


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


class _Events:
    def __init__(self) -> None:
        self.events: list[object] = []

    def emit(self, event: object) -> bool:
        self.events.append(event)
        return True


def test_embedding_input_continues_like_its_tokens(models: dict[str, RKLLMModel]) -> None:
    """Input embeddings (the multimodal path) go through llama.cpp's embedding batch: the
    rows of the prompt's own tokens give the tokens' continuation."""
    ref = models["torch"]
    ids = ref.tokenize(ref.render_chat(PROMPTS[1]), True)
    with torch.inference_mode():
        rows = ref._engine._model.get_input_embeddings()(torch.tensor(ids)).numpy()
    sampling = SamplingParams(top_k=1, repeat_penalty=1.0, max_new_tokens=12).resolve(CFG)
    sink = _Events()
    engine = models["llama.cpp"]._engine
    engine.run(Request(EmbedInput(rows), sampling), sink)
    from_rows = [e.token_id for e in sink.events if isinstance(e, TokenEvent)]
    from_ids = models["llama.cpp"].generate(ids, max_new_tokens=12, **GREEDY).token_ids
    assert isinstance(sink.events[-1], FinishEvent)
    assert from_rows == list(from_ids)


def test_abort_stops_a_long_prefill_and_close_waits_for_it() -> None:
    """llama.cpp checks the engine's abort flag between graph nodes: a long prompt stops
    within its prefill, and closing the model during a forward pass frees nothing under it."""
    config = RuntimeConfig(max_context_len=2048, ignore_eos_token=True)
    long_prompt = " ".join(["The lighthouse keeper climbed the stairs and trimmed the wick."] * 100)
    with RKLLMModel(fetch_model("smollm2"), config, kernels="llama.cpp") as model:
        ids = model.tokenize(long_prompt, True)[:1500]
        full = model.generate(ids[:40], max_new_tokens=2, **GREEDY)  # warm
        assert full.finish_reason == "length"
        stream = model.stream(ids, max_new_tokens=5, **GREEDY)
        timer = threading.Timer(0.5, stream.abort)
        start = time.perf_counter()
        timer.start()
        result = stream.result
        elapsed = time.perf_counter() - start
        assert result.finish_reason == "abort" and result.usage.completion_tokens == 0
        # the engine stays usable, its cache consistent
        again = model.generate(ids[:40], max_new_tokens=2, **GREEDY)
        assert again.token_ids == full.token_ids
        # an aborted turn of a conversation leaves the conversation as it was
        model.generate(ids[:40], max_new_tokens=2, keep_history=True, **GREEDY)
        held = model.kv_cache_size()
        aborted = model.stream(ids[40:], max_new_tokens=5, keep_history=True, **GREEDY)
        threading.Timer(2.0, aborted.abort).start()
        assert aborted.result.finish_reason == "abort"
        engine = model._engine
        assert model.kv_cache_size() == held
        assert engine._cache.length == len(engine._cache_ids)
        closing = model.stream(ids, max_new_tokens=5, **GREEDY)
        time.sleep(0.5)
    # leaving the block closed the model mid-prefill: the request ends, nothing crashes
    try:
        reason = closing.result.finish_reason
    except ModelClosedError:
        reason = "closed"
    assert reason in ("abort", "closed")
    assert elapsed < 4.0, elapsed  # a full prefill of these ~1300 tokens takes ~8 s here


def test_context_shift_and_history_edits_replay_through_llama_cpp() -> None:
    """The engine's context shift (keep n_keep, drop half the rest, prefill again) and
    clear_kv_cache ranges run on llama.cpp's cache like on torch's."""
    config = RuntimeConfig(max_context_len=64, n_keep=8, ignore_eos_token=True)
    with RKLLMModel(fetch_model("smollm2"), config, kernels="llama.cpp") as model:
        result = model.generate("Once upon a time, in a lighthouse,", max_new_tokens=100, **GREEDY)
        assert result.finish_reason == "length" and len(result.token_ids) == 100
        model.generate("My name is Ada and I keep the light.", max_new_tokens=4,
                       keep_history=True, **GREEDY)  # fmt: skip
        held = model.kv_cache_size()[0]
        model._engine.clear_kv_cache(start_pos=[2], end_pos=[6])
        assert model.kv_cache_size()[0] == held - 4
        reply = model.generate(" What is my name?", max_new_tokens=4, keep_history=True, **GREEDY)
        assert len(reply.token_ids) == 4


def test_an_aborted_chunked_forward_leaves_the_cache_as_it_was() -> None:
    """A long input goes through in 512-token chunks; when the abort comes after the first,
    its positions are dropped again, and the cache continues exactly as a fresh one."""
    from rkllm_core import AbortedError
    from rkllm_core.pc.llamacpp import LlamaCppCache, LlamaCppDecoder

    path = fetch_model("smollm2")
    held: list[LlamaCppCache] = []
    decoder = LlamaCppDecoder(path, n_ctx=2048, threads=1,
                              should_abort=lambda: bool(held) and held[0].length >= 512)
    try:
        cache = decoder.new_cache(2048)
        held.append(cache)
        ids = list(range(1000, 1700))
        decoder.forward(cache, ids[:10])
        with pytest.raises(AbortedError):
            decoder.forward(cache, ids[10:])  # 690 tokens: 512 go through, then the abort
        assert cache.length == 10
        resumed = decoder.forward(cache, ids[10:20]).numpy()
        cache.clear()
        decoder.forward(cache, ids[:10])
        np.testing.assert_array_equal(decoder.forward(cache, ids[10:20]).numpy(), resumed)
    finally:
        decoder.close()


def test_thread_counts_are_llama_cpps_and_change_no_logit(models: dict[str, RKLLMModel]) -> None:
    """Decode steps run on ``num_threads`` (default: half the CPUs), multi-token passes on
    ``batch_threads`` (default: ``num_threads``); neither resizes torch's process-wide pool,
    and no count changes a logit or a greedy token."""
    import os

    half = max(1, (os.cpu_count() or 2) // 2)
    extra = models["llama.cpp"].info.extra
    assert (extra["threads"], extra["batch_threads"]) == (half, half)
    before = torch.get_num_threads()
    other = before + 1  # a count the model is not asked for: a resize would show
    torch.set_num_threads(other)
    try:
        with RKLLMModel(fetch_model("smollm2"), CFG, kernels="llama.cpp", num_threads=1,
                        batch_threads=2) as split:  # fmt: skip
            assert torch.get_num_threads() == other
            assert (split.info.extra["threads"], split.info.extra["batch_threads"]) == (1, 2)
            text = "The keeper climbed the stairs, trimmed the wick and wound the clockwork"
            np.testing.assert_array_equal(split.logits(text), models["llama.cpp"].logits(text))
            ids = [m.generate(PROMPTS[0], max_new_tokens=16, **GREEDY).token_ids
                   for m in (split, models["llama.cpp"])]  # fmt: skip
            assert ids[0] == ids[1]
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="batch_threads must be a whole number >= 1"):
        RKLLMModel(fetch_model("smollm2"), CFG, kernels="llama.cpp", batch_threads=0)


def test_shared_model_follows_the_kernels_variable(
    models: dict[str, RKLLMModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shared copy per kernels: RKLLM_PC_KERNELS set after a torch copy was shared gets
    a llama.cpp model, and naming the kernels it resolves to gives the same copy."""
    from rkllm_core import shared_model
    from rkllm_core.pc.kernels import KERNELS_ENV

    path = fetch_model("smollm2")
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    on_torch = shared_model(path, CFG)
    monkeypatch.setenv(KERNELS_ENV, "llama.cpp")
    on_cpp = shared_model(path, CFG)
    try:
        assert on_torch.info.extra["kernels"] == "torch"
        assert on_cpp.info.extra["kernels"] == "llama.cpp"
        assert shared_model(path, CFG, kernels="llama.cpp") is on_cpp
        assert shared_model(path, CFG, kernels="torch") is on_torch
    finally:
        on_cpp.close()
        on_torch.close()
