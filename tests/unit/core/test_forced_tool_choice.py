"""tool_choice='any' among several tools: the model's logits pick a bound tool to force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from rkllm_core import RKLLMModel
from rkllm_core.reply import choose_tool, name_logprob

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add.",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}},
                    "required": ["a"]}}},
]


def test_choose_tool_takes_the_name_the_logits_prefer() -> None:
    def encode(text: str) -> list[int]:
        return [ord(c) % 50 for c in text]

    def logits_favouring(letter: str) -> Callable[[list[int]], np.ndarray]:
        def logits(ids: list[int]) -> np.ndarray:
            out = np.zeros((len(ids), 50))
            out[:, ord(letter) % 50] = 5.0
            return out
        return logits

    text = '{"name": "'
    assert choose_tool(text, ["alpha", "bravo"], encode, logits_favouring("a")) == "alpha"
    assert choose_tool(text, ["alpha", "bravo"], encode, logits_favouring("b")) == "bravo"
    # the score covers the name and its closing quote, nothing of the text before it
    assert name_logprob(text, "ab", encode, logits_favouring("a")) < 0


def test_forced_any_names_a_bound_tool_on_the_pc_engine(tiny_model_dir: Path) -> None:
    with RKLLMModel(tiny_model_dir) as model:
        assert model.info.supports_logits
        result = model.generate([{"role": "user", "content": "Hello!"}], tools=TOOLS,
                                tool_choice="any", max_new_tokens=24, top_k=1)
        names = [c.name for c in result.tool_calls] + [c.name for c in result.invalid_tool_calls]
        assert names and names[0] in ("get_weather", "add")  # a random model still can't stray
        assert result.text.startswith('<tool_call>\n{"name": "' + names[0] + '"')
