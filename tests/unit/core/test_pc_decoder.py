"""The compact decoder forward and its static KV cache against transformers' own forward.

Tiny random Llama and Qwen2 models (no download): the same logits at every step (prefill,
a prefill continuing a cache, single-token decode, embedding input), the same greedy tokens,
and the fallback to transformers for architectures the compact forward does not cover.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.pc.decoder import build_decoder
from rkllm_core.pc.kv_cache import StaticKVCache
from rkllm_core.pc.lookahead import PromptLookup

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _tiny(family: str, seed: int = 0):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = {
        "vocab_size": 101,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    elif family == "llama-rope-scaled":
        scaling = {"rope_type": "linear", "factor": 2.0}
        model = LlamaForCausalLM(LlamaConfig(**common, rope_scaling=scaling))
    elif family == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0.0, 0.5)
    elif family == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common, pad_token_id=0))
    else:
        raise ValueError(family)
    with torch.no_grad():  # sharper logits: greedy paths that depend on every digit
        model.lm_head.weight.mul_(4.0)
    return model.eval()


def _hf_step(model, cache, ids=None, embeds=None) -> torch.Tensor:
    """transformers' own forward: the last position's logits, appending to ``cache``."""
    params = inspect.signature(model.forward).parameters
    kwargs = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if embeds is not None:
        kwargs["inputs_embeds"] = embeds.unsqueeze(0)
    else:
        kwargs["input_ids"] = torch.tensor([ids])
    return model(**kwargs).logits[0, -1]


@pytest.mark.parametrize("family", ["llama", "llama-rope-scaled", "qwen2"])
def test_logits_match_transformers_at_every_step(family: str) -> None:
    from transformers import DynamicCache

    model = _tiny(family)
    decoder = build_decoder(model)
    assert decoder is not None
    # q/k/v and gate/up run as one matrix each; the modules now view the fused weights
    assert decoder.layers[0].qkv is not None and decoder.layers[0].gate_up is not None
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.data_ptr() == decoder.layers[0].qkv.data_ptr()
    hf_cache, cache = DynamicCache(), decoder.new_cache(128)
    steps = [list(range(3, 20)), [40, 41, 42, 43], [7], [8], [9]]
    with torch.inference_mode():
        for ids in steps:
            expect = _hf_step(model, hf_cache, ids)
            got = decoder.forward(cache, ids)
            torch.testing.assert_close(got, expect, **TOL)
        embeds = torch.randn(5, 64)
        torch.testing.assert_close(
            decoder.forward(cache, embeds=embeds), _hf_step(model, hf_cache, embeds=embeds), **TOL
        )
    assert cache.length == sum(len(s) for s in steps) + 5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_tokens_equal_transformers_generate(family: str) -> None:
    model = _tiny(family, seed=1)
    prompt = [5, 17, 33, 2, 90, 61]
    with torch.inference_mode():
        expect = model.generate(
            torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40, do_sample=False
        )[0, len(prompt) :].tolist()
        decoder = build_decoder(model)
        cache = decoder.new_cache(64)  # grows past its first allocation on the way
        logits, got = decoder.forward(cache, prompt), []
        for _ in range(40):
            got.append(int(torch.argmax(logits)))
            logits = decoder.forward(cache, [got[-1]])
    assert got == expect
    assert len(set(got)) > 3  # a varied sequence, not one repeated token


def test_quantized_layers_run_as_modules_with_their_numerics() -> None:
    from transformers import DynamicCache

    from rkllm_core.toolkit.quant.pipeline import replace_modules
    from rkllm_core.toolkit.quant.qlinear import QuantLinear

    model = _tiny("llama", seed=2)
    generator = torch.Generator().manual_seed(0)
    new = {}
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")):
            q = torch.randint(-127, 128, module.weight.shape, generator=generator)
            scales = module.weight.abs().amax(dim=1, keepdim=True).half() / 127
            new[name] = QuantLinear.from_quantized(q, scales, "w8a8", act_scale=0.05)
    replace_modules(model, new)
    decoder = build_decoder(model)
    assert decoder.layers[0].qkv is None and decoder.layers[0].gate_up is None
    hf_cache, cache = DynamicCache(), decoder.new_cache(64)
    with torch.inference_mode():
        for ids in ([1, 2, 3, 4, 5], [6], [7]):
            torch.testing.assert_close(
                decoder.forward(cache, ids), _hf_step(model, hf_cache, ids), **TOL
            )


def test_other_architectures_fall_back_to_transformers() -> None:
    assert build_decoder(_tiny("phi3")) is None


def test_static_cache_grows_keeps_contents_and_refuses_past_capacity() -> None:
    cache = StaticKVCache(2, 3, 4, capacity=10, initial=2)
    first = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    cache.reserve(2)
    for layer in range(2):
        cache.write(layer, first, -first)
    cache.advance(2)
    cache.reserve(5)  # 7 positions: reallocated (capped at the capacity), contents kept
    assert cache.keys.shape[2] >= 7
    keys, values = cache.layer(1, 2)
    assert torch.equal(keys, first) and torch.equal(values, -first)
    with pytest.raises(ValueError, match="at most 10"):
        cache.reserve(9)
    cache.clear()
    assert cache.length == 0


@pytest.mark.parametrize("params", [
    {"top_k": 1, "repeat_penalty": 1.0},
    {"top_k": 1, "repeat_penalty": 1.3, "frequency_penalty": 0.2},
    {"top_k": 1, "stop": ["o"]},
    {"top_k": 20, "top_p": 0.9, "temperature": 0.8, "seed": 7},
    {"mirostat": 2, "seed": 3},
])
def test_engine_outputs_do_not_depend_on_the_decoder(tiny_model_dir: Path, params: dict) -> None:
    """transformers' forward, the compact one, and the compact one checking guessed tokens
    (greedy) produce the same tokens, the same history and the same cache."""
    cfg = RuntimeConfig(max_context_len=64, max_new_tokens=24)
    variants = {
        "transformers": {"compact_decoder": False},
        "compact": {"lookahead": 0},
        "compact+lookahead": {},
    }
    runs = {}
    for name, options in variants.items():
        with RKLLMModel(tiny_model_dir, cfg, **options) as model:
            first = model.generate("The quick brown fox", keep_history=True, **params)
            # a second turn continues the cache; a long one shifts the context window
            second = model.generate(" jumps over the lazy dog" * 6, keep_history=True, **params)
            engine = model._engine
            if name != "transformers":  # every position held is a token of the history
                assert engine._cache.length == len(engine._cache_ids)
            runs[name] = (first.token_ids, second.token_ids, model.kv_cache_size())
    assert runs["compact"] == runs["transformers"]
    assert runs["compact+lookahead"] == runs["transformers"]
    assert len(runs["compact"][0]) > 0


def test_prompt_lookup_proposes_what_followed_the_last_ngram() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 9, 2, 3], max_draft=3)
    assert lookup.propose() == [4]  # after "2 3": a 2-gram match proposes half as many
    lookup.extend([4])
    assert lookup.propose() == [5, 6, 9]  # after "2 3 4": a 3-gram match
    assert lookup.propose(limit=1) == [5]
    assert PromptLookup([7, 8, 9], max_draft=3).propose() == []  # no earlier occurrence
    # embedding-input positions (-1) end a guess
    assert PromptLookup([5, 6, -1, 0, 5, 6]).propose() == []
    assert PromptLookup([5, 6, 4, -1, 5, 6], max_draft=4).propose() == [4]


def test_guessing_decodes_in_fewer_forward_passes(tiny_model_dir: Path) -> None:
    cfg = RuntimeConfig(max_context_len=256, max_new_tokens=60)
    calls = {}
    for lookahead in (0, 4):
        with RKLLMModel(tiny_model_dir, cfg, lookahead=lookahead) as model:
            decoder = model._engine._decoder
            count = [0]
            forward = decoder.forward

            def counting(*args, _forward=forward, _count=count, **kwargs):
                _count[0] += 1
                return _forward(*args, **kwargs)

            decoder.forward = counting
            result = model.generate("The quick brown fox", top_k=1, repeat_penalty=1.0)
            calls[lookahead] = (count[0], result.token_ids)
    assert calls[4][1] == calls[0][1]
    assert calls[4][0] < calls[0][0]  # the tiny model repeats itself: guesses get confirmed


def test_a_fresh_prompt_reuses_the_prefix_it_shares_with_the_previous_one(
    tiny_model_dir: Path,
) -> None:
    system = "Rockchip NPU runs large language models on the board. " * 3
    prompts = [system + "The quick brown fox", system + "Hello world", system + "Hello world"]
    cfg = RuntimeConfig(max_context_len=256, max_new_tokens=12)
    runs = {}
    for name, options in {"transformers": {"compact_decoder": False}, "reuse": {}}.items():
        with RKLLMModel(tiny_model_dir, cfg, **options) as model:
            results = [model.generate(p, top_k=1) for p in prompts]
            # a conversation (keep_history) and an embedding-input run in between
            turn = model.generate("Hello", keep_history=True, top_k=1)
            assert model.kv_cache_size() == [turn.usage.prompt_tokens + len(turn.token_ids)]
            model.clear_kv_cache()
            results.append(model.generate(prompts[0], top_k=1))
            runs[name] = results
    assert [r.token_ids for r in runs["reuse"]] == [r.token_ids for r in runs["transformers"]]
    first, second, third, after_clear = runs["reuse"]
    shared = len(_tokens(tiny_model_dir, system)) - 1  # the last token may merge with the next
    assert first.perf.prefill_tokens == first.usage.prompt_tokens
    assert second.perf.prefill_tokens <= second.usage.prompt_tokens - shared
    assert third.perf.prefill_tokens == 1  # the same prompt again: only its last token
    assert after_clear.perf.prefill_tokens == after_clear.usage.prompt_tokens
    assert all(r.perf.prefill_tokens == r.usage.prompt_tokens for r in runs["transformers"])


def _tokens(model_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False)


def test_a_model_its_caller_still_owns_keeps_its_weights() -> None:
    from transformers import DynamicCache

    model = _tiny("qwen2", seed=3)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    decoder = build_decoder(model, fuse=False)
    assert decoder.layers[0].qkv is None and decoder.layers[0].gate_up is None
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before
    hf_cache, cache = DynamicCache(), decoder.new_cache(64)
    with torch.inference_mode():
        for ids in ([4, 8, 15, 16, 23], [42], [7]):
            torch.testing.assert_close(
                decoder.forward(cache, ids), _hf_step(model, hf_cache, ids), **TOL
            )
