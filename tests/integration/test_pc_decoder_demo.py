"""The compact decoder on the demo models: greedy tokens identical to transformers' forward.

The PC engine runs Llama and Qwen2 through its own forward (rkllm_core.pc.decoder), checking
guessed tokens in greedy decoding (rkllm_core.pc.lookahead); the engine with
``compact_decoder=False`` is the transformers forward it replaces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rkllm_core import RKLLMModel, RuntimeConfig, fetch_model

pytestmark = pytest.mark.integration

PROMPTS = [
    [{"role": "user", "content": "Write a python function that reverses a list."}],
    [{"role": "user", "content": "Name three rivers in Europe and where they flow."}],
    "Rockchip's NPU runs language models on a board; the PC engine",
    # an answer that quotes its context: guessed tokens get confirmed (lookahead)
    [{"role": "user", "content": "Context: The Danube flows through Vienna, Budapest and"
      " Belgrade before reaching the Black Sea.\nQuestion: Which cities does the Danube flow"
      " through? Quote the context."}],
]


def _greedy_runs(name: str, prompts: list, tokens: int) -> dict[bool, list[list[int]]]:
    runs: dict[bool, list[list[int]]] = {}
    cfg = RuntimeConfig(max_context_len=512, ignore_eos_token=True)
    for compact in (True, False):
        with RKLLMModel(fetch_model(name), cfg, compact_decoder=compact) as model:
            assert model.info.extra["decoder"] == ("compact" if compact else "transformers")
            runs[compact] = [
                model.generate(p, max_new_tokens=tokens, top_k=1, repeat_penalty=1.0).token_ids
                for p in prompts
            ]
    return runs


def test_smollm2_greedy_tokens_are_identical() -> None:
    runs = _greedy_runs("smollm2", PROMPTS, 40)
    assert runs[True] == runs[False]
    assert all(len(set(ids)) > 10 for ids in runs[True])


@pytest.mark.slow
def test_qwen_coder_greedy_tokens_are_identical() -> None:
    runs = _greedy_runs("qwen2.5-coder-0.5b", [PROMPTS[0], PROMPTS[3]], 24)
    assert runs[True] == runs[False]


def test_smollm2_decode_logits_match_the_logits_mode() -> None:
    """The logits the compact decoder samples from equal the stateless logits mode
    (transformers' batched forward) at every position of a generated sequence."""
    with RKLLMModel(fetch_model("smollm2"), RuntimeConfig(max_context_len=256)) as model:
        prompt = model.tokenize(model.render_chat(PROMPTS[1]), True)
        generated = list(
            model.generate(prompt, max_new_tokens=12, top_k=1, repeat_penalty=1.0).token_ids
        )
        engine = model._engine
        decoded = []
        with torch.inference_mode():
            engine._reset_cache()
            decoded.append(engine._forward(prompt).numpy())
            for token in generated[:-1]:
                decoded.append(engine._forward([token]).numpy())
            engine._reset_cache()
        full = model.logits(prompt + generated[:-1])
    expect = full[len(prompt) - 1 :]
    np.testing.assert_allclose(np.stack(decoded), expect, rtol=1e-4, atol=1e-4)
    assert [int(np.argmax(row)) for row in expect] == generated


def test_smollm2_prompts_sharing_a_system_prompt_give_the_same_tokens() -> None:
    """Consecutive requests with one system prompt (as the framework suites send them):
    the cached prefix is reused, the tokens are those of a full prefill."""
    system = {"role": "system", "content": "You answer questions about European geography."
              " Keep answers short and name the countries involved."}
    questions = ["Which rivers cross Germany?", "Where is the Danube's source?",
                 "Where is the Danube's source?"]
    prompts = [[system, {"role": "user", "content": q}] for q in questions]
    cfg = RuntimeConfig(max_context_len=512)
    runs = {}
    for compact in (True, False):
        with RKLLMModel(fetch_model("smollm2"), cfg, compact_decoder=compact) as model:
            runs[compact] = [model.generate(p, max_new_tokens=24, top_k=1) for p in prompts]
    assert [r.token_ids for r in runs[True]] == [r.token_ids for r in runs[False]]
    reused = [r.usage.prompt_tokens - r.perf.prefill_tokens for r in runs[True]]
    assert reused[0] == 0 and reused[1] > 20 and runs[True][2].perf.prefill_tokens == 1
