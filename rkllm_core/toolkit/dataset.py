"""The calibration dataset of ``build()``: Rockchip's ``[{"input": ..., "target": ...}]`` JSON."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import BuildConfigError

# Used when build() gets no dataset but calibration is needed: short English and code samples,
# enough to find activation ranges of a small model; a real dataset from the model's own domain
# is always better (the build logs a warning).
DEFAULT_SAMPLES: tuple[dict[str, str], ...] = (
    {
        "input": "Explain what a quantized neural network is.",
        "target": "A quantized network stores its weights and activations as small integers"
        " instead of floating point numbers. Each tensor keeps a scale that maps the integers"
        " back to real values, so the model needs less memory and runs faster on hardware"
        " with integer arithmetic, at the cost of a small loss of accuracy.",
    },
    {
        "input": "Write a Python function that returns the n-th Fibonacci number.",
        "target": "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a\n\nprint([fibonacci(i) for i in range(10)])",
    },
    {
        "input": "Summarise the water cycle in a few sentences.",
        "target": "Water evaporates from oceans, lakes and plants, rises as vapour and cools"
        " into clouds. When droplets grow heavy they fall as rain or snow, which flows into"
        " rivers and ground water and eventually returns to the sea, where the cycle begins"
        " again.",
    },
    {
        "input": "What is the capital of France, and what is it known for?",
        "target": "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre"
        " museum, its cafés and cuisine, and for its long history as a centre of art, fashion"
        " and science.",
    },
    {
        "input": "Translate to English: 'Le chat dort sur le canapé depuis ce matin.'",
        "target": "The cat has been sleeping on the sofa since this morning.",
    },
    {
        "input": "List three ways to reduce the power consumption of an embedded device.",
        "target": "1. Lower the clock frequency and voltage when the load is light.\n2. Put"
        " idle peripherals and memory into sleep states.\n3. Move heavy computation to an"
        " accelerator such as an NPU, which does the same work with far less energy.",
    },
)


def load_dataset(dataset: str | os.PathLike[str] | list[Any] | None) -> list[dict[str, str]]:
    """Validate and return the samples of ``dataset`` (a JSON file path, or the list itself)."""
    if dataset is None:
        return []
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise BuildConfigError(
                f"calibration dataset {str(dataset)!r} does not exist: pass the path of a JSON"
                f' file holding [{{"input": "...", "target": "..."}}, ...] or None'
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BuildConfigError(f"calibration dataset {path} is not valid JSON: {exc}") from exc
    else:
        data = dataset
    if not isinstance(data, list) or not data:
        raise BuildConfigError(
            'the calibration dataset must be a non-empty JSON list of {"input", "target"}'
            f" objects, got {type(data).__name__}{' (empty)' if data == [] else ''}"
        )
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise BuildConfigError(
                f"calibration sample {i} is a {type(item).__name__}, not an object"
            )
        for key in ("input", "target"):
            if not isinstance(item.get(key), str):
                raise BuildConfigError(
                    f"calibration sample {i} needs a string {key!r}"
                    f" ({'missing' if key not in item else type(item[key]).__name__})"
                )
        if not (item["input"] + item["target"]).strip():
            raise BuildConfigError(f"calibration sample {i} is empty")
        out.append({"input": item["input"], "target": item["target"]})
    return out


def dataset_digest(samples: list[dict[str, str]]) -> str:
    """sha256 of the samples (for the manifest: which data calibrated this export)."""
    return hashlib.sha256(json.dumps(samples, sort_keys=True).encode("utf-8")).hexdigest()
