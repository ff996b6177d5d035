"""A preallocated key/value cache for one sequence, written in place as tokens are forwarded.

transformers' DynamicCache concatenates every layer's keys and values on every step (a new
tensor per layer and token); this cache keeps one buffer per kind and writes the new positions
into it, growing by doubling up to a fixed capacity so a short chat does not reserve the whole
context window.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Keys and values of ``num_layers`` layers, shaped ``[layers, kv_heads, positions, dim]``."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        initial: int = 256,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, not {capacity}")
        self.capacity = capacity
        self.length = 0  # positions written so far
        self._shape = (num_layers, num_kv_heads, head_dim)
        self._dtype = dtype
        self._device = torch.device(device)
        self.keys, self.values = self._allocate(min(initial, capacity))

    def _allocate(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        layers, heads, dim = self._shape
        shape = (layers, heads, positions, dim)
        return (
            torch.empty(shape, dtype=self._dtype, device=self._device),
            torch.empty(shape, dtype=self._dtype, device=self._device),
        )

    def reserve(self, n_new: int) -> None:
        """Make room for ``n_new`` more positions (raises past the capacity)."""
        needed = self.length + n_new
        if needed > self.capacity:
            raise ValueError(f"the KV cache holds at most {self.capacity} positions, not {needed}")
        allocated = self.keys.shape[2]
        if needed <= allocated:
            return
        size = allocated
        while size < needed:
            size *= 2
        keys, values = self._allocate(min(size, self.capacity))
        keys[:, :, : self.length].copy_(self.keys[:, :, : self.length])
        values[:, :, : self.length].copy_(self.values[:, :, : self.length])
        self.keys, self.values = keys, values

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``[kv_heads, n_new, dim]`` keys and values at the positions after ``length``."""
        end = self.length + keys.shape[1]
        self.keys[layer, :, self.length : end].copy_(keys)
        self.values[layer, :, self.length : end].copy_(values)

    def layer(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the first ``end`` positions of one layer's keys and values."""
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def advance(self, n_new: int) -> None:
        """Count ``n_new`` positions as written (after every layer stored them)."""
        self.length += n_new

    def truncate(self, length: int) -> None:
        """Forget the positions from ``length`` on (they are overwritten by the next write)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate {self.length} positions to {length}")
        self.length = length

    def clear(self) -> None:
        """Forget every position; the buffers are kept for the next sequence."""
        self.length = 0
