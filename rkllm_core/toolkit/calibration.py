"""Calibration data for ``build()`` without a dataset.

Two sources, measured against each other in ``benchmarks/quant_ppl.py``:

- ``builtin``: rkllm-py's own calibration text (``data/calibration.txt``, about 44 KB written
  for the package: stories, explanations, letters, reports, recipes, poems, chat exchanges, code
  in five languages, JSON/CSV/tables, Chinese, French, Spanish and German). Chat records are
  rendered with the model's chat template, so the template's special tokens (which carry the
  largest activations of many models) are calibrated as they occur in use.
- ``generated``: text the float model writes itself (as in data-free / LLM-QAT-style
  quantization): the user turns of the built-in chats, rendered with the chat template, and the
  openings of the built-in texts are continued by the model with the PC engine's sampler, in
  batches, within a time budget.
- ``builtin+generated``: the built-in text first, then generated text up to the wanted count.

How many tokens: GPTQ wants :data:`~.quant.pipeline.GPTQ_TOKENS_PER_INPUT` per input of the
widest quantized layer at least; for weight-only dtypes it takes the whole built-in text even
past that (see :attr:`~.quant.pipeline.BuildPlan.whole_builtin_calibration`); generation tops
up to the wanted count only. Static activation ranges alone need far fewer
(:data:`STATIC_CALIB_TOKENS`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildConfigError

log = logging.getLogger(__name__)

BUILTIN_TEXT = Path(__file__).parent / "data" / "calibration.txt"
SOURCES = ("builtin", "generated", "builtin+generated")
#: tokens that calibrate static activation ranges (no GPTQ): the ranges settle well before this
STATIC_CALIB_TOKENS = 4096
#: length of one calibration sequence (built-in records are packed into sequences this long)
SEQ_TOKENS = 512
#: default time budget (seconds) for self-generated calibration text
GENERATION_BUDGET_S = 600.0


@dataclass(frozen=True)
class Record:
    """One record of the built-in text: plain ``text``, or a ``chat`` of messages."""

    kind: str
    text: str = ""
    messages: tuple[dict[str, str], ...] = ()


@dataclass
class Calibration:
    """The token sequences ``build()`` calibrates on, and a one-line account of them."""

    sequences: list[list[int]] = field(default_factory=list)
    builtin_tokens: int = 0
    generated_tokens: int = 0
    wanted_tokens: int = 0
    source: str = "builtin"
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def describe(self) -> str:
        parts = []
        if self.builtin_tokens:
            parts.append(f"{self.builtin_tokens:,} tokens of rkllm-py's built-in calibration text")
        if self.generated_tokens:
            parts.append(f"{self.generated_tokens:,} tokens the model wrote itself")
        return (
            f"{' + '.join(parts) or 'nothing'} ({len(self.sequences)} sequences; the build"
            f" wanted {self.wanted_tokens:,})"
        )


def parse_builtin(text: str) -> list[Record]:
    """The records of the built-in calibration file (format: see the file's header)."""
    records: list[Record] = []
    kind: str | None = None
    lines: list[str] = []
    messages: list[dict[str, str]] = []
    role: str | None = None

    def close_turn() -> None:
        nonlocal lines
        if role is not None:
            messages.append({"role": role, "content": unwrap("\n".join(lines).strip())})
        lines = []

    def close_record() -> None:
        nonlocal messages, lines, role
        if kind == "text":
            body = "\n".join(lines).strip()
            if body:
                records.append(Record("text", text=body))
        elif kind == "chat":
            close_turn()
            if messages:
                records.append(Record("chat", messages=tuple(messages)))
        messages, lines, role = [], [], None

    for line in text.splitlines():
        if line.startswith("### "):
            close_record()
            kind = line[4:].strip()
            if kind not in ("text", "chat"):
                raise ValueError(f"unknown calibration record kind {kind!r}")
        elif kind is None:
            continue  # header comments
        elif kind == "chat" and line.startswith(">>> "):
            close_turn()
            role = line[4:].strip()
        else:
            lines.append(line)
    close_record()
    return records


_BLOCK_START = re.compile(r"\s*([-*] |\d+\. |\||#|>)")


def unwrap(text: str) -> str:
    """Join hard-wrapped lines into paragraphs, as a model writes its replies: the file keeps
    lines short for reading, chat turns should not. Code fences, list items, tables and blank
    lines start new lines; indented continuation lines of a list item are joined to it."""
    out: list[str] = []
    fence = False
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith("```"):
            fence = not fence
            out.append(line)
            continue
        prev = out[-1].strip() if out else ""
        joinable = (
            not fence and s and prev and not prev.startswith("```") and not _BLOCK_START.match(line)
        )
        if joinable:
            out[-1] = out[-1].rstrip() + " " + s
        else:
            out.append(line)
    return "\n".join(out)


def load_builtin() -> list[Record]:
    """The built-in calibration records."""
    return parse_builtin(BUILTIN_TEXT.read_text(encoding="utf-8"))


def builtin_digest() -> str:
    """sha256 of the built-in calibration file (for the manifest)."""
    return hashlib.sha256(BUILTIN_TEXT.read_bytes()).hexdigest()


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """``messages`` as the model sees them: its chat template, or plain role lines."""
    if _has_template(tokenizer):
        try:
            return str(
                tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt
                )
            )
        except Exception as exc:  # a template that refuses e.g. a system turn
            log.debug("chat template failed (%s): plain role lines instead", exc)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if generation_prompt else "")


def _encode(tokenizer: Any, text: str, templated: bool) -> list[int]:
    # a rendered template already holds its special tokens (BOS included where it has one)
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    return [int(i) for i in ids]


def builtin_sequences(tokenizer: Any, seq_tokens: int = SEQ_TOKENS) -> list[list[int]]:
    """The built-in records as token sequences of at most ``seq_tokens``.

    Records are shuffled (fixed seed) so that any prefix of the result mixes kinds, and short
    ones are packed together; a long record is split.
    """
    records = load_builtin()
    random.Random(0).shuffle(records)
    seqs: list[list[int]] = []
    cur: list[int] = []
    for rec in records:
        if rec.kind == "chat":
            ids = _encode(tokenizer, render_chat(tokenizer, list(rec.messages), False), True)
        else:
            ids = _encode(tokenizer, rec.text + "\n", False)
        while ids:
            room = seq_tokens - len(cur)
            cur.extend(ids[:room])
            ids = ids[room:]
            if len(cur) >= seq_tokens:
                seqs.append(cur)
                cur = []
    if len(cur) >= 16:
        seqs.append(cur)
    return seqs


def generation_prompts(tokenizer: Any, opening_tokens: int = 24) -> list[list[int]]:
    """Prompts for self-generated calibration: the built-in chats up to their first assistant
    turn (rendered with the chat template, ready for the reply), and the first
    ``opening_tokens`` tokens of each built-in text (continued as plain prose or code)."""
    chats, texts = [], []
    for rec in load_builtin():
        if rec.kind == "chat":
            first = next(i for i, m in enumerate(rec.messages) if m["role"] != "system")
            turns = list(rec.messages[: first + 1])
            chats.append(_encode(tokenizer, render_chat(tokenizer, turns, True), True))
        else:
            texts.append(_encode(tokenizer, rec.text, False)[:opening_tokens])
    # alternate, so a budget that ends early still leaves both kinds
    out: list[list[int]] = []
    for i in range(max(len(chats), len(texts))):
        out.extend(p for p in (chats[i:i + 1] + texts[i:i + 1]) if p)  # fmt: skip
    return out


def _sampling_params(seed: int) -> Any:
    from ..config import RuntimeConfig, SamplingParams

    # varied but on-distribution text: the sampling settings of an ordinary chat deployment
    return SamplingParams(
        top_k=40,
        top_p=0.95,
        temperature=0.8,
        repeat_penalty=1.1,
        max_new_tokens=SEQ_TOKENS,
        seed=seed,
    ).resolve(RuntimeConfig())


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        val = getattr(src, "eos_token_id", None)
        if isinstance(val, int):
            ids.add(val)
        elif isinstance(val, (list, tuple)):
            ids.update(int(v) for v in val)
    return ids


def generate_sequences(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    tokens_wanted: int,
    budget_s: float,
    batch_size: int = 16,
    seq_tokens: int = SEQ_TOKENS,
    desc: str = "self-generated calibration",
) -> list[list[int]]:
    """Let ``model`` continue ``prompts`` (in batches) until ``tokens_wanted`` tokens (prompt and
    reply together) are collected or ``budget_s`` seconds have passed.

    Each token is drawn by the PC engine's sampler (RKLLM's sampling rules), so the text is what
    the model would write in use. Returns one sequence (prompt + reply) per prompt used.
    """
    import inspect

    import torch
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    from ..pc.sampling import Sampler

    if tokens_wanted <= 0 or not prompts:
        return []
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    pad = int(pad) if pad is not None else (min(eos) if eos else 0)
    # transformers 5 renamed past_key_values to cache (as the PC engine does: accept both)
    cache_kwarg = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    deadline = time.monotonic() + budget_s
    out: list[list[int]] = []
    got = 0
    bar = tqdm(total=tokens_wanted, desc=desc, unit="token")
    try:
        for start in range(0, len(prompts), batch_size):
            if got >= tokens_wanted or time.monotonic() >= deadline:
                break
            batch = [p[: seq_tokens // 2] for p in prompts[start : start + batch_size]]
            rows = [list(p) for p in batch]
            got += sum(len(p) for p in rows)
            bar.update(sum(len(p) for p in rows))
            samplers = [Sampler(_sampling_params(start + i), vocab) for i in range(len(rows))]
            width = max(len(p) for p in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, p in enumerate(rows):  # left padding: every row's next token is at the end
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            live = [True] * len(rows)
            cache = DynamicCache()  # updated in place by every forward
            step_ids, step_pos = ids, pos
            with torch.no_grad():
                while any(live) and got < tokens_wanted and time.monotonic() < deadline:
                    res = model(
                        input_ids=step_ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=step_pos.to(device),
                        use_cache=True,
                        logits_to_keep=1,
                        **{cache_kwarg: cache},
                    )
                    logits = res.logits[:, -1, :].float().cpu()
                    nxt = torch.full((len(rows),), pad, dtype=torch.long)
                    # the token drawn now is attended to by the next step; a finished row
                    # feeds padding from then on
                    col = torch.tensor([[int(x)] for x in live], dtype=torch.long)
                    for i in range(len(rows)):
                        if not live[i]:
                            continue
                        tok = samplers[i](logits[i], rows[i][len(batch[i]) :])
                        rows[i].append(tok)
                        nxt[i] = tok
                        got += 1
                        bar.update(1)
                        if tok in eos or len(rows[i]) >= seq_tokens:
                            live[i] = False
                    mask = torch.cat([mask, col], dim=1)
                    step_pos = step_pos[:, -1:] + 1
                    step_ids = nxt.unsqueeze(1)
            out.extend(rows)
            bar.set_postfix_str(f"{max(0.0, deadline - time.monotonic()):.0f} s of budget left")
    finally:
        bar.close()
    if got < tokens_wanted:
        log.warning(
            "self-generated calibration stopped at %d of %d tokens (%s): a larger"
            " calibration_budget_s or a dataset gives GPTQ more to work with",
            got,
            tokens_wanted,
            "time budget spent" if time.monotonic() >= deadline else "no prompts left",
        )
    return out


def tokens_wanted(targets: dict[str, Any], gptq: bool) -> int:
    """Calibration tokens a build wants: for GPTQ a few per input of the widest quantized layer
    (its Hessian estimates need them), otherwise enough for static activation ranges."""
    if not gptq:
        return STATIC_CALIB_TOKENS
    from .quant.pipeline import GPTQ_TOKENS_PER_INPUT

    return GPTQ_TOKENS_PER_INPUT * max(lin.in_features for lin in targets.values())


def default_calibration(
    model: Any,
    tokenizer: Any,
    tokens_wanted: int,
    source: str = "builtin",
    budget_s: float = GENERATION_BUDGET_S,
    whole_builtin: bool = False,
) -> Calibration:
    """The calibration sequences for a build without a dataset (see the module docstring).

    ``whole_builtin`` takes all of the built-in text even past ``tokens_wanted`` (for GPTQ,
    whose Hessian estimates steady with every token; generation still only tops up to
    ``tokens_wanted``)."""
    if source not in SOURCES:
        raise BuildConfigError(
            f"calibration_source must be one of {', '.join(SOURCES)}, not {source!r}"
        )
    start = time.monotonic()
    cal = Calibration(wanted_tokens=tokens_wanted, source=source)
    if source in ("builtin", "builtin+generated"):
        for seq in builtin_sequences(tokenizer):
            if cal.builtin_tokens >= tokens_wanted and not whole_builtin:
                break
            cal.sequences.append(seq)
            cal.builtin_tokens += len(seq)
    missing = tokens_wanted - cal.builtin_tokens
    if source != "builtin" and missing > 0:
        gen = generate_sequences(model, tokenizer, generation_prompts(tokenizer), missing, budget_s)
        cal.sequences.extend(s for s in gen if s)
        cal.generated_tokens = sum(len(s) for s in gen)
    if not cal.sequences:
        raise BuildConfigError("the built-in calibration text tokenizes to nothing")
    cal.seconds = time.monotonic() - start
    return cal
