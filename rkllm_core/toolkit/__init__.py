"""The toolkit: Rockchip's rkllm-toolkit conversion API (``RKLLM``) simulated on the PC.

``from rkllm_core.toolkit import RKLLM`` replaces ``from rkllm.api import RKLLM`` in an existing
conversion script. Importing this package is cheap; torch is loaded when a model is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RKLLM"]


def __getattr__(name: str) -> Any:
    if name == "RKLLM":
        from .api import RKLLM

        return RKLLM
    raise AttributeError(name)
