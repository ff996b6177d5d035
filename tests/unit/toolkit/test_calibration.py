"""Calibration without a dataset: the built-in text and text the model writes itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rkllm_core.errors import BuildConfigError
from rkllm_core.toolkit import RKLLM
from rkllm_core.toolkit import calibration as C
from rkllm_core.toolkit.quant.pipeline import GPTQ_TOKENS_PER_INPUT, target_linears

from .conftest import make_tokenizer


def test_builtin_text_parses_into_varied_text_and_chat_records() -> None:
    records = C.load_builtin()
    kinds = {r.kind for r in records}
    assert kinds == {"text", "chat"}
    assert 30_000 < C.BUILTIN_TEXT.stat().st_size < 100_000  # tens of KB, as shipped
    for rec in records:
        if rec.kind == "chat":
            roles = [m["role"] for m in rec.messages]
            assert set(roles) <= {"system", "user", "assistant"}
            assert roles[-1] == "assistant" and "user" in roles
            assert all(m["content"] for m in rec.messages)
        else:
            assert rec.text and not rec.text.startswith("###")
    text = C.BUILTIN_TEXT.read_text(encoding="utf-8")
    # code, data and other scripts are part of the mix
    for marker in ("def ", "#include", "SELECT", '{"', "中", "é"):
        assert marker in text


def test_parse_rejects_unknown_kinds_and_keeps_turns_apart() -> None:
    recs = C.parse_builtin(
        "# header\n### chat\n>>> user\nhi there\nhow are\nyou\n>>> assistant\nfine\n"
        "### text\nline one\nline two\n"
    )
    assert recs[0].messages == (
        {"role": "user", "content": "hi there how are you"},  # chat turns are unwrapped
        {"role": "assistant", "content": "fine"},
    )
    assert recs[1].text == "line one\nline two"  # plain text keeps its lines
    with pytest.raises(ValueError, match="poem"):
        C.parse_builtin("### poem\nroses\n")


def test_unwrap_keeps_code_lists_and_tables() -> None:
    text = "A long\nsentence.\n\n```py\nx = 1\ny = 2\n```\n- one\n  more\n- two\n| a |\n| b |"
    assert C.unwrap(text) == (
        "A long sentence.\n\n```py\nx = 1\ny = 2\n```\n- one more\n- two\n| a |\n| b |"
    )


def test_builtin_sequences_are_packed_templated_and_bounded() -> None:
    tok = make_tokenizer()
    seqs = C.builtin_sequences(tok, seq_tokens=256)
    assert all(16 <= len(s) <= 256 for s in seqs)
    assert sum(len(s) > 250 for s in seqs) >= len(seqs) - 1  # packed full, except the last
    decoded = "".join(tok.decode(s) for s in seqs)
    assert "<|user|>" in decoded and "<|assistant|>" in decoded  # chats use the template
    assert "Pip had decided" in decoded  # and plain texts are there too
    again = C.builtin_sequences(tok, seq_tokens=256)
    assert again == seqs  # the shuffle is fixed: builds are reproducible


def test_generated_text_continues_the_prompts_within_the_wanted_count(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    tok = llm.tokenizer
    prompts = C.generation_prompts(tok)
    assert any(tok.decode(p).endswith("<|assistant|>") for p in prompts)  # chat replies
    assert any("<|" not in tok.decode(p) for p in prompts)  # and prose openings
    seqs = C.generate_sequences(llm.model, tok, prompts, 300, budget_s=120, batch_size=2)
    total = sum(len(s) for s in seqs)
    # stops once the wanted count is reached: at most one more step, or one batch's prompts
    assert 300 <= total < 300 + 2 * (C.SEQ_TOKENS // 2)
    assert len(seqs) < len(prompts)
    for seq, prompt in zip(seqs, prompts, strict=False):
        assert seq[: len(prompt)] == prompt[: C.SEQ_TOKENS // 2] and len(seq) > len(prompt)
    # a spent budget stops generation: what was collected so far is kept
    short = C.generate_sequences(llm.model, tok, prompts[:4], 10_000, budget_s=1e-9)
    assert sum(len(s) for s in short) < 10_000


def test_build_without_dataset_uses_the_builtin_text_as_gptq_needs(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    widest = max(lin.in_features for lin in target_linears(llm.model).values())
    llm.build(quantized_dtype="w4a16", target_platform="rk3576", num_npu_core=2)
    cal = llm.manifest["calibration"]
    # weight-only GPTQ takes the whole built-in text, past the tokens it wants at least
    whole = sum(len(s) for s in C.builtin_sequences(llm.tokenizer))
    wanted = GPTQ_TOKENS_PER_INPUT * widest
    assert wanted < whole == cal["tokens"]
    assert cal["default_source"] == "builtin" and cal["generated_tokens"] == 0
    assert cal["builtin_sha256"] == C.builtin_digest() and cal["dataset"] is None
    assert "built-in calibration text" in cal["description"]
    # with static activation ranges GPTQ keeps to the tokens it wants
    llm.build(quantized_dtype="w8a8", optimization_level=1)
    assert wanted <= llm.manifest["calibration"]["tokens"] < wanted + C.SEQ_TOKENS
    # static activation ranges alone (level 0) need fewer tokens than GPTQ's Hessians
    llm.build(quantized_dtype="w8a8", optimization_level=0)
    assert C.STATIC_CALIB_TOKENS <= llm.manifest["calibration"]["tokens"]
    assert llm.manifest["calibration"]["tokens"] < C.STATIC_CALIB_TOKENS + C.SEQ_TOKENS


def test_build_tops_up_with_generated_text(tiny_model_dir: Callable[[str], Path]) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(
        quantized_dtype="w4a16",
        target_platform="rk3576",
        num_npu_core=2,
        calibration_source="generated",
    )
    cal = llm.manifest["calibration"]
    assert cal["default_source"] == "generated"
    assert cal["generated_tokens"] == cal["tokens"] > 0
    assert "the model wrote itself" in cal["description"]
    assert "built-in" not in cal["description"]


def test_dataset_builds_describe_the_dataset(
    tiny_model_dir: Callable[[str], Path], calib_json: Path
) -> None:
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(quantized_dtype="w8a8", optimization_level=0, dataset=str(calib_json))
    cal = llm.manifest["calibration"]
    assert cal["description"].startswith(str(calib_json))
    assert cal["default_source"] is None and cal["builtin_sha256"] is None
    llm.build(quantized_dtype="w8a8", optimization_level=0, activation_mode="dynamic")
    assert "needs no calibration" in llm.manifest["calibration"]["description"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"calibration_source": "internet"}, "calibration_source"),
        ({"calibration_budget_s": 0}, "calibration_budget_s"),
        ({"calibration_budget_s": True}, "calibration_budget_s"),
    ],
)
def test_calibration_options_are_validated_before_any_work(
    tiny_model_dir: Callable[[str], Path],
    kwargs: dict[str, object],
    field: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_calibration(*_a: object, **_k: object) -> None:
        raise AssertionError("validation must come first")

    monkeypatch.setattr(C, "default_calibration", no_calibration)
    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    with pytest.raises(BuildConfigError, match=field):
        llm.build(quantized_dtype="w8a8", **kwargs)


def test_chat_model_runs_through_the_pc_engine(
    tiny_model_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One generation path: chat_model is the PC engine's greedy decode, not HF generate."""
    import torch

    from rkllm_core.engine import TokenEvent
    from rkllm_core.pc.engine import PCEngine

    llm = RKLLM(strict=True)
    llm.load_huggingface(str(tiny_model_dir("llama")))
    llm.build(optimization_level=0, quantized_dtype="w8a8", activation_mode="dynamic")
    runs: list[object] = []
    emitted: list[int] = []
    real_run = PCEngine.run

    class Recorder:
        def __init__(self, sink: object) -> None:
            self.sink = sink

        def emit(self, event: object) -> bool:
            if isinstance(event, TokenEvent) and event.token_id >= 0:
                emitted.append(event.token_id)
            return self.sink.emit(event)  # type: ignore[attr-defined]

    def counting_run(self: PCEngine, request: object, sink: object) -> None:
        runs.append(request)
        real_run(self, request, Recorder(sink))  # type: ignore[arg-type]

    def no_generate(*_a: object, **_k: object) -> None:
        raise AssertionError("chat_model must not use Hugging Face generate")

    monkeypatch.setattr(PCEngine, "run", counting_run)
    monkeypatch.setattr(llm.model, "generate", no_generate)
    prompt = "The quick brown fox"
    text = llm.chat_model(prompt, {"max_length": 6})
    assert len(runs) == 1 and isinstance(text, str)
    # greedy by hand on the built model (BOS as the tokenizer adds it): the same tokens
    ids = llm.tokenizer(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            logits = llm.model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
            if out[-1] == llm.tokenizer.eos_token_id:
                out.pop()
                break
    assert emitted == out
    # the engine let go of the model: the toolkit still runs it
    assert llm.get_logits(prompt) is not None
