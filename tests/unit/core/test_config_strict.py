"""Config values are refused with the project's error type, naming the field; CLI one line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from rkllm_core import ConfigError, RKLLMError, RuntimeConfig, SamplingParams

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_context_len": True}, "max_context_len"),
        ({"max_context_len": "2048"}, "max_context_len"),
        ({"max_context_len": 2048.0}, "max_context_len"),
        ({"max_context_len": 0}, "max_context_len"),
        ({"temperature": math.inf}, "temperature"),
        ({"frequency_penalty": math.nan}, "frequency_penalty"),
        ({"top_p": "0.9"}, "top_p"),
        ({"mirostat": True}, "mirostat"),
        ({"n_batch": 256}, "n_batch"),
        ({"max_new_tokens": False}, "max_new_tokens"),
    ],
)
def test_runtime_config_refuses_with_a_typed_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"RuntimeConfig\.{field}=") as info:
        RuntimeConfig(**kwargs)
    assert isinstance(info.value, RKLLMError) and isinstance(info.value, ValidationError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": -(2**64)}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"top_k": True}, "top_k"),
        ({"presence_penalty": -math.inf}, "presence_penalty"),
        ({"max_new_tokens": "5"}, "max_new_tokens"),
    ],
)
def test_sampling_params_refuse_with_a_typed_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"SamplingParams\.{field}="):
        SamplingParams(**kwargs)


def test_good_values_still_pass_and_assignment_is_checked() -> None:
    cfg = RuntimeConfig(top_p=1, temperature=0, enabled_cpus=[5, 4], max_context_len=2048)
    assert cfg.top_p == 1.0 and cfg.enabled_cpus == (4, 5)
    assert SamplingParams(seed=2**63 - 1, stop="x").seed == 2**63 - 1
    with pytest.raises(ConfigError, match=r"RuntimeConfig\.top_k='3'"):
        cfg.top_k = "3"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="n_keep"):
        RuntimeConfig(n_keep=10, max_context_len=10)


def test_cli_prints_one_line_not_a_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rkllm_core.cli", "chat", "smollm2", "--max-context-len", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "max_context_len=0" in errors[0]
    assert "Traceback" not in proc.stderr
