"""PC engine against transformers' generate() (and llama.cpp when installed), same run.

Contenders: the engine on its default torch kernels, the engine on llama.cpp's kernels
(``kernels="llama.cpp"``), transformers' generate() on the same dequantized weights, and
llama.cpp itself (llama-cpp-python's ``Llama``, its own sampler) on the same GGUF file; the two
llama.cpp rows appear when ``llama_cpp`` is importable (the ``[llamacpp]`` extra).

For each model: time to first token on a chat prompt, prefill tokens/s on a longer prompt (both
full prefills: the engine's reuse of a shared prefix is switched off by clearing the cache), and
decode tokens/s, greedy, interleaved over several rounds so that a loaded machine slows every
contender alike; medians and the ratios engine / transformers (and engine / llama.cpp). The
load average before and after is printed: on a shared machine compare ratios, not absolutes.

    .venv/bin/python benchmarks/pc_engine.py [--models smollm2,qwen2.5-coder-0.5b]
        [--tokens 32] [--rounds 3] [--threads N] [--cpp-threads N] [--cpp-batch-threads N]

Threads: torch's default (or ``--threads``) for the torch contenders, checked to be in force
when they run; for the llama.cpp ones the engine's (half the CPUs; ``--cpp-threads`` for
decode steps, ``--cpp-batch-threads`` for prompts), the same counts for llama.cpp itself. On a
busy machine llama.cpp with a thread per core stalls.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.pc.loading import load_pretrained

CHAT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
LONG_TEXT = (Path(__file__).parent / "data" / "invented_facts.json").read_text()


@dataclass
class Timings:
    """Per-round figures of one contender: seconds and tokens/s."""

    ttft: list[float] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)

    def row(self, name: str) -> str:
        med = statistics.median
        return (f"{name:<24}{1000 * med(self.ttft):>10.1f}{med(self.prefill):>16.1f}"
                f"{med(self.decode):>14.2f}")


class Engine:
    """The rkllm PC engine through the public streaming API."""

    def __init__(self, model: RKLLMModel) -> None:
        self.model = model

    def first_token(self, prompt: list[int]) -> float:
        # a full prefill: forget the cached prefix the previous request left behind
        self.model.clear_kv_cache()
        start = time.perf_counter()
        for _ in self.model.stream(prompt, max_new_tokens=1, top_k=1):
            break
        return time.perf_counter() - start

    def decode(self, prompt: list[int], n: int) -> float:
        start, first = time.perf_counter(), None
        stream = self.model.stream(prompt, max_new_tokens=n, top_k=1, repeat_penalty=1.0)
        for _ in stream:
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        assert stream.result.usage.completion_tokens == n, stream.result.usage
        return (n - 1) / (end - (first or start))


class Transformers:
    """transformers' own generate() on the same weights, greedy, no early stop."""

    def __init__(self, lm) -> None:
        self.lm = lm

    def _generate(self, prompt: list[int], n: int) -> None:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            self.lm.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)  # fmt: skip

    def first_token(self, prompt: list[int]) -> float:
        start = time.perf_counter()
        self._generate(prompt, 1)
        return time.perf_counter() - start

    def decode(self, prompt: list[int], n: int) -> float:
        first = self.first_token(prompt)
        start = time.perf_counter()
        self._generate(prompt, n)
        return (n - 1) / (time.perf_counter() - start - first)


class LlamaCpp:
    """llama-cpp-python on the GGUF file itself (its own quantized kernels)."""

    def __init__(self, path: str, threads: int, batch_threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=2048, n_threads=threads,
                         n_threads_batch=batch_threads, verbose=False)  # fmt: skip
        self.eos = self.llm.token_eos()

    def _stream(self, prompt: list[int], n: int):
        self.llm.reset()
        return self.llm.create_completion(
            prompt, max_tokens=n, temperature=0.0, top_k=1, repeat_penalty=1.0, stream=True,
            logit_bias={self.eos: -1e9},
        )

    def first_token(self, prompt: list[int]) -> float:
        start = time.perf_counter()
        for _ in self._stream(prompt, 1):
            break
        return time.perf_counter() - start

    def decode(self, prompt: list[int], n: int) -> float:
        start, first, count = time.perf_counter(), None, 0
        for _ in self._stream(prompt, n):
            count += 1
            if first is None:
                first = time.perf_counter()
        return (count - 1) / (time.perf_counter() - (first or start))


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


ENGINE, ENGINE_CPP, HF, CPP = ("engine (torch)", "engine (llama.cpp)", "transformers generate",
                               "llama.cpp")  # fmt: skip


def bench_model(
    name: str,
    tokens: int,
    rounds: int,
    threads: int,
    cpp_threads: int | None,
    cpp_batch_threads: int | None,
) -> None:
    config = RuntimeConfig(max_context_len=2048, ignore_eos_token=True)
    engine_model = RKLLMModel(name, config, num_threads=threads, kernels="torch")
    path = engine_model.info.model_path
    chat = engine_model.tokenize(engine_model.render_chat(CHAT), True)
    long = engine_model.tokenize(LONG_TEXT, True)[:256]
    models = [engine_model]
    contenders: dict[str, Engine | Transformers | LlamaCpp] = {ENGINE: Engine(engine_model)}
    cpp_note = ""
    if _has_llama_cpp():
        chosen = {"num_threads": cpp_threads, "batch_threads": cpp_batch_threads}
        cpp_model = RKLLMModel(path, config, kernels="llama.cpp", **chosen)
        models.append(cpp_model)
        contenders[ENGINE_CPP] = Engine(cpp_model)
        decode_threads = cpp_model.info.extra["threads"]
        batch_threads = cpp_model.info.extra["batch_threads"]
        contenders[CPP] = LlamaCpp(path, decode_threads, batch_threads)
        cpp_note = f"; llama.cpp threads: {decode_threads} decode, {batch_threads} prompt"
    contenders[HF] = Transformers(load_pretrained(path).model)
    # every torch contender on the same pool: loading a model must not have resized it
    assert torch.get_num_threads() == threads, (torch.get_num_threads(), threads)
    timings = {key: Timings() for key in contenders}
    for contender in contenders.values():  # warm-up
        contender.first_token(chat)
        contender.decode(chat, 4)
    for round_index in range(rounds):
        order = list(contenders.items())
        if round_index % 2:  # alternate who goes first: no contender always runs after another
            order.reverse()
        for key, contender in order:
            t = timings[key]
            t.ttft.append(contender.first_token(chat))
            t.prefill.append(len(long) / contender.first_token(long))
            t.decode.append(contender.decode(chat, tokens))
    print(f"\n{Path(path).name}: chat prompt {len(chat)} tokens, prefill prompt {len(long)} tokens,"
          f" {tokens} greedy tokens, median of {rounds} rounds; torch threads:"
          f" {torch.get_num_threads()}{cpp_note}")
    print(f"{'':<24}{'TTFT ms':>10}{'prefill tok/s':>16}{'decode tok/s':>14}")
    for key in contenders:
        print(timings[key].row(key))
    for key in (ENGINE, ENGINE_CPP):
        for base in (HF, CPP):
            if key in timings and base in timings:
                print(_ratios(f"{key} / {base}", timings[key], timings[base]))
    for model in models:
        model.close()
    contenders.clear()
    gc.collect()


def _ratios(label: str, ours: Timings, base: Timings) -> str:
    med = statistics.median
    return (f"{label}: decode {med(ours.decode) / med(base.decode):.2f}x,"
            f" prefill {med(ours.prefill) / med(base.prefill):.2f}x,"
            f" TTFT {med(base.ttft) / med(ours.ttft):.2f}x (higher is better)")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="smollm2,qwen2.5-coder-0.5b")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; default: torch's")  # fmt: skip
    parser.add_argument("--cpp-threads", type=int, default=None,
                        help="llama.cpp threads for decode steps; default: the engine's"
                             " (half the CPUs)")
    parser.add_argument("--cpp-batch-threads", type=int, default=None,
                        help="llama.cpp threads for prompts; default: --cpp-threads")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}; before: {_load()}")
    for name in args.models.split(","):
        bench_model(name.strip(), args.tokens, args.rounds, threads, args.cpp_threads,
                    args.cpp_batch_threads)  # fmt: skip
    print(f"\nafter: {_load()}")


if __name__ == "__main__":
    main()
