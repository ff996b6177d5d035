"""PC engine against plain transformers generate() on the same model, prompt and greedy settings.

Prints time to first token and decode tokens/s of both, interleaved over several rounds in the
same run, and the ratio engine / transformers (>= 1.0 means no overhead).

    .venv/bin/python benchmarks/pc_engine.py [--model smollm2] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rkllm_core import RKLLMModel, RuntimeConfig

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def time_engine(model: RKLLMModel, n_tokens: int) -> tuple[float, float]:
    """(time to first token in s, decode tokens/s) through the public streaming API."""
    start = time.perf_counter()
    first = None
    stream = model.stream(PROMPT, max_new_tokens=n_tokens, top_k=1, repeat_penalty=1.0)
    for _ in stream:
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    result = stream.result
    assert result.usage.completion_tokens == n_tokens, result.usage
    return first or 0.0, (n_tokens - 1) / (total - (first or 0.0))


def time_transformers(lm, ids: torch.Tensor, n_tokens: int) -> tuple[float, float]:
    """(time to first token in s, decode tokens/s) of generate(), greedy, no early stop."""
    kwargs = {"do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        start = time.perf_counter()
        lm.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        lm.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, **kwargs)
        total = time.perf_counter() - start
    return first, (n_tokens - 1) / (total - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cfg = RuntimeConfig(max_context_len=1024, ignore_eos_token=True)
    engine = RKLLMModel(args.model, cfg)
    path = engine.info.model_path
    directory, name = path.rsplit("/", 1)
    gguf = {"gguf_file": name} if name.endswith(".gguf") else {}
    base = directory if gguf else path
    tok = AutoTokenizer.from_pretrained(base, **gguf)
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **gguf).eval()
    ids = torch.tensor([engine.tokenize(engine.render_chat(PROMPT))])

    time_engine(engine, 4)  # warm-up both
    time_transformers(lm, ids, 4)
    eng_ttft, eng_tps, hf_ttft, hf_tps = [], [], [], []
    for _ in range(args.rounds):
        a, b = time_engine(engine, args.tokens)
        c, d = time_transformers(lm, ids, args.tokens)
        eng_ttft.append(a)
        eng_tps.append(b)
        hf_ttft.append(c)
        hf_tps.append(d)
    engine.close()
    med = statistics.median
    print(f"model {name}, prompt {ids.shape[1]} tokens, {args.tokens} new tokens, greedy,"
          f" {args.rounds} rounds (median), torch threads {torch.get_num_threads()}")
    print(f"{'':<22}{'TTFT ms':>10}{'decode tok/s':>14}")
    print(f"{'rkllm PC engine':<22}{1000 * med(eng_ttft):>10.1f}{med(eng_tps):>14.2f}")
    print(f"{'transformers generate':<22}{1000 * med(hf_ttft):>10.1f}{med(hf_tps):>14.2f}")
    print(f"decode ratio engine/transformers: {med(eng_tps) / med(hf_tps):.3f}"
          f"  (TTFT ratio transformers/engine: {med(hf_ttft) / med(eng_ttft):.3f})")
    del tok


if __name__ == "__main__":
    main()
