"""Config validation, stop strings, tool-call parsing, chat rendering, pooling helpers."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rkllm_core import (
    ChatRenderer,
    ChatTemplateParts,
    ConfigError,
    EmbeddingConfig,
    RuntimeConfig,
    SamplingParams,
    parse_tool_calls,
)
from rkllm_core.embeddings import EmbeddingSequence, build_sequence, l2_normalize, pool
from rkllm_core.stops import StopMatcher


def test_runtime_config_has_every_rkllm_param_field() -> None:
    fields = set(RuntimeConfig.model_fields)
    expected = {
        "max_context_len", "max_new_tokens", "top_k", "top_p", "temperature", "repeat_penalty",
        "frequency_penalty", "presence_penalty", "mirostat", "mirostat_tau", "mirostat_eta",
        "n_keep", "skip_special_token", "ignore_eos_token", "is_async", "img_start", "img_end",
        "img_content", "base_domain_id", "embed_flash", "enabled_cpus", "n_batch",
        "use_cross_attn",
    }
    assert expected <= fields


def test_cpu_mask_is_derived_from_cores() -> None:
    cfg = RuntimeConfig(enabled_cpus=(7, 4, 5, 6))
    assert cfg.enabled_cpus == (4, 5, 6, 7)
    assert cfg.enabled_cpus_mask == 0b11110000
    assert cfg.enabled_cpus_num == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_context_len": 0},
        {"top_p": 1.5},
        {"temperature": -1},
        {"n_keep": 4096, "max_context_len": 4096},
        {"enabled_cpus": (1, 1)},
        {"mirostat": 3},
        {"unknown_field": 1},
    ],
)
def test_runtime_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        RuntimeConfig(**kwargs)


def test_sampling_resolves_from_config() -> None:
    cfg = RuntimeConfig(top_k=20, temperature=0.5, max_new_tokens=99)
    resolved = SamplingParams(temperature=0.9, stop="END").resolve(cfg)
    assert resolved.top_k == 20
    assert resolved.temperature == 0.9
    assert resolved.max_new_tokens == 99
    assert resolved.stop == ("END",)
    assert not resolved.greedy
    assert SamplingParams(top_k=1).resolve(cfg).greedy


def test_sampling_rejects_empty_stop() -> None:
    with pytest.raises(ValidationError):
        SamplingParams(stop=[""])


@pytest.mark.parametrize(
    ("pieces", "stops", "shown", "stopped"),
    [
        (["Hello ", "wor", "ld"], ["world"], "Hello ", True),
        (["a<", "|e", "nd|>b"], ["<|end|>"], "a", True),
        (["abc", "de"], ["xyz"], "abcde", False),
        (["ab", "c<"], ["<stop>"], "abc<", False),  # held back, then released by flush
        (["xx", "STO", "P"], ["STOP", "TO"], "xxS", True),  # earliest match wins
    ],
)
def test_stop_matcher_spans_token_boundaries(
    pieces: list[str], stops: list[str], shown: str, stopped: bool
) -> None:
    matcher = StopMatcher(stops)
    out = ""
    found = False
    for piece in pieces:
        text, found = matcher.push(piece)
        out += text
        if found:
            break
    out += matcher.flush()
    assert out == shown
    assert found is stopped


def test_tool_calls_well_formed_and_several() -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call><tool_call>{"name": "time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>'
    )
    content, calls, invalid = parse_tool_calls(text)
    assert content == "Let me check."
    assert [c.name for c in calls] == ["weather", "time"]
    assert calls[0].arguments == {"city": "Oslo"}
    assert calls[1].arguments == {"tz": "UTC"}
    assert calls[0].id != calls[1].id
    assert invalid == []


def test_tool_calls_malformed_json_is_reported_not_raised() -> None:
    _, calls, invalid = parse_tool_calls('<tool_call>{"name": "x", "arguments": {</tool_call>')
    assert calls == []
    assert len(invalid) == 1
    assert "not valid JSON" in invalid[0].error


def test_tool_calls_bare_json_and_plain_text() -> None:
    _, calls, _ = parse_tool_calls('```json\n{"name": "f", "arguments": {"a": 1}}\n```')
    assert calls[0].name == "f" and calls[0].arguments == {"a": 1}
    content, calls, invalid = parse_tool_calls("Just an answer.")
    assert (content, calls, invalid) == ("Just an answer.", [], [])


def test_chat_renderer_merges_repeated_roles_and_renders_tools() -> None:
    template = (
        "{% if tools %}TOOLS:{{ tools | tojson }}\n{% endif %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
        "{% if m.tool_calls %}{{ m.tool_calls[0].function.name }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    renderer = ChatRenderer(template)
    text = renderer.render(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
            {"role": "tool", "content": "42", "tool_call_id": "1"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    assert text.startswith('TOOLS:[{"type": "function"')
    # trim_blocks (as in transformers) drops the newline after each block tag
    assert text.endswith("\n[user]a\n\nb[assistant]f[tool]42[assistant]")


def test_chat_renderer_parts_and_errors() -> None:
    renderer = ChatRenderer(None, ChatTemplateParts("SYS ", "<u>", "</u><a>"))
    assert renderer.render([{"role": "user", "content": "hi"}]) == "SYS <u>hi</u><a>"
    with pytest.raises(ConfigError, match="role"):
        renderer.render([{"role": "robot", "content": "x"}])
    with pytest.raises(ConfigError):
        renderer.render([])
    failing = ChatRenderer("{{ raise_exception('only user turns') }}")
    with pytest.raises(ConfigError, match="only user turns"):
        failing.render([{"role": "user", "content": "x"}])


def test_embedding_sequences_locate_the_text() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    echo = build_sequence("ab", EmbeddingConfig(strategy="echo", echo_template="<{text}|{text}>"),
                          encode, 100)
    assert echo.ids[echo.start : echo.end] == (97, 98)
    assert echo.start == 4  # "<ab|" precedes the second copy
    eol = build_sequence("ab", EmbeddingConfig(strategy="prompteol"), encode, 100)
    assert (eol.start, eol.end) == (len(eol.ids) - 1, len(eol.ids))
    truncated = build_sequence("x" * 50, EmbeddingConfig(strategy="plain"), encode, 10)
    assert len(truncated.ids) == 10
    with pytest.raises(ValidationError):
        EmbeddingConfig(prompteol_template="no slot")


def test_pooling_and_normalisation() -> None:
    hidden = np.arange(12, dtype=np.float32).reshape(4, 3)
    seq = EmbeddingSequence((1, 2, 3, 4), 1, 3)
    assert pool(hidden, seq, "first").tolist() == [3, 4, 5]
    assert pool(hidden, seq, "last").tolist() == [6, 7, 8]
    assert pool(hidden, seq, "mean").tolist() == [4.5, 5.5, 6.5]
    unit = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert unit.tolist() == [[0.6, 0.8], [0.0, 0.0]]
