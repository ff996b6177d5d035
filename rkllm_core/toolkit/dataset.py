"""The calibration dataset of ``build()``: Rockchip's ``[{"input": ..., "target": ...}]`` JSON."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import BuildConfigError


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
