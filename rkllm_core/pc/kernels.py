"""Which kernels run the PC engine's forward pass, and the interface both implementations share.

The PC engine owns everything a request means (tokenizer, sampler, stop rules, the KV cache's
history, prefix reuse, lookahead, cancellation); a :class:`Decoder` only turns tokens into
logits, appending their keys and values to a :class:`DecoderCache` it can truncate. Two
implement it:

- ``"torch"`` (the default): :class:`~rkllm_core.pc.decoder.CompactDecoder`, float32 weights
  dequantized from any source (Hugging Face directory, GGUF file, toolkit export);
- ``"llama.cpp"`` (GGUF files only, the ``[llamacpp]`` extra):
  :class:`~rkllm_core.pc.llamacpp.LlamaCppDecoder`, llama.cpp's kernels on the file's own
  quantized blocks — several times faster to decode, with quantized arithmetic: its logits are
  close to, not equal to, the float32 engine's, so greedy text agrees for a while and can then
  take another turn.

llama.cpp is never chosen because it happens to be installed: results must not depend on what
else is in the environment. It is chosen by the engine option ``kernels="llama.cpp"`` or, for
every GGUF model a process loads, by the environment variable ``RKLLM_PC_KERNELS=llama.cpp``
(a test run or a dev loop switches without code changes; other formats keep torch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from ..errors import ConfigError

if TYPE_CHECKING:  # annotations only: shared_model resolves kernels on a board without torch
    import numpy as np
    import torch

PCKernels = Literal["torch", "llama.cpp"]
KERNELS_ENV = "RKLLM_PC_KERNELS"
LLAMACPP_EXTRA = "pip install 'rkllm-py[llamacpp]'"


class DecoderCache(Protocol):
    """Keys and values of one sequence's positions, in order."""

    length: int

    def truncate(self, length: int) -> None:
        """Forget the positions from ``length`` on."""

    def clear(self) -> None:
        """Forget every position (buffers may be kept for the next sequence)."""


class Decoder(Protocol):
    """Tokens in, logits out; the forward pass of the PC engine."""

    def new_cache(self, capacity: int) -> DecoderCache:
        """An empty cache for up to ``capacity`` positions."""

    def forward(
        self,
        cache: DecoderCache,
        ids: Sequence[int] | None = None,
        embeds: torch.Tensor | None = None,
        *,
        all_rows: bool = False,
    ) -> torch.Tensor:
        """Append ``ids`` (or ``[n, hidden]`` ``embeds``) to ``cache``; the last logits row
        (``[vocab]``), or with ``all_rows`` the logits of every new position (``[n, vocab]``)."""

    def close(self) -> None:
        """Release what the decoder holds beyond Python memory; idempotent."""


class StatelessForward(Protocol):
    """Logits or last-layer hidden states (after the final norm) of whole sequences."""

    def __call__(self, sequences: list[list[int]], hidden: bool) -> list[np.ndarray]: ...


def is_gguf(model: object) -> bool:
    """True for a path to a ``.gguf`` file."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    path = Path(model)
    return path.suffix.lower() == ".gguf" and path.is_file()


def choose_kernels(requested: PCKernels | None, model: object) -> PCKernels:
    """The kernels for ``model``: ``requested``, else ``$RKLLM_PC_KERNELS`` for GGUF files,
    else torch. Raises ConfigError for an unknown name or llama.cpp on a non-GGUF model."""
    valid = get_args(PCKernels)
    if requested is None:
        from_env = os.environ.get(KERNELS_ENV, "").strip()
        if not from_env:
            return "torch"
        if from_env not in valid:
            raise ConfigError(
                f"{KERNELS_ENV}={from_env!r} is not one of {valid}; unset it or pick one"
            )
        # the variable switches the models that can switch; others keep torch
        return from_env if is_gguf(model) else "torch"  # type: ignore[return-value]
    if requested not in valid:
        raise ConfigError(f"kernels must be one of {valid}, not {requested!r}")
    if requested == "llama.cpp" and not is_gguf(model):
        raise ConfigError(
            f"kernels='llama.cpp' runs GGUF files; {model!r} is not one. Load the .gguf file,"
            f" or use kernels='torch' for Hugging Face directories and toolkit exports"
        )
    return requested
