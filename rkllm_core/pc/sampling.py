"""llama.cpp-style token sampling with RKLLM's parameter names and meanings.

The runtime is built on llama.cpp's sampler chain, so this follows its order: repetition
penalties over the last ``repeat_last_n`` tokens, then either mirostat (v1/v2) or
top-k → top-p → temperature → draw. ``top_k == 1`` (or temperature 0) is greedy *after* the
penalties, exactly as on the board.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import ResolvedSampling


def apply_penalties(
    logits: torch.Tensor, recent: Sequence[int], params: ResolvedSampling
) -> torch.Tensor:
    """Return logits with repeat, frequency and presence penalties applied (llama.cpp rules).

    For every distinct token among ``recent``: a positive logit is divided by repeat_penalty, a
    negative one multiplied by it; then ``logit -= count * frequency_penalty + presence_penalty``.
    """
    if not recent or (
        params.repeat_penalty == 1.0
        and params.frequency_penalty == 0.0
        and params.presence_penalty == 0.0
    ):
        return logits
    ids, counts = torch.unique(torch.as_tensor(recent, dtype=torch.long), return_counts=True)
    out = logits.clone()
    chosen = out[ids]
    if params.repeat_penalty != 1.0:
        chosen = torch.where(
            chosen > 0, chosen / params.repeat_penalty, chosen * params.repeat_penalty
        )
    chosen = chosen - counts.to(chosen.dtype) * params.frequency_penalty
    chosen = chosen - params.presence_penalty
    out[ids] = chosen
    return out


class Sampler:
    """Draws tokens for one request; keeps mirostat's running ``mu`` between steps."""

    def __init__(self, params: ResolvedSampling, vocab_size: int) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        self.mu = 2.0 * params.mirostat_tau

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """Pick the next token from a 1-D logits vector given the tokens generated so far."""
        p = self.params
        # ids < 0 stand for embedding-input positions, which have no token to penalise
        recent = [t for t in history[-p.repeat_last_n :] if t >= 0] if p.repeat_last_n > 0 else []
        logits = apply_penalties(logits.float(), recent, p)
        if p.mirostat == 1:
            return self._mirostat_v1(logits)
        if p.mirostat == 2:
            return self._mirostat_v2(logits)
        if p.greedy:
            return int(torch.argmax(logits))
        return self._top_k_top_p(logits)

    def _top_k_top_p(self, logits: torch.Tensor) -> int:
        p = self.params
        k = p.top_k if 0 < p.top_k < logits.numel() else logits.numel()
        values, indices = torch.topk(logits, k)  # sorted, descending
        if p.top_p < 1.0:
            probs = torch.softmax(values, dim=-1)
            cumulative = torch.cumsum(probs, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (at least one token)
            keep = int(torch.searchsorted(cumulative, torch.tensor(p.top_p))) + 1
            values, indices = values[:keep], indices[:keep]
        probs = torch.softmax(values / p.temperature, dim=-1)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        return int(indices[choice])

    def _draw(self, values: torch.Tensor, indices: torch.Tensor) -> tuple[int, float]:
        probs = torch.softmax(values, dim=-1)
        pick = int(torch.multinomial(probs, 1, generator=self.generator))
        return int(indices[pick]), float(probs[pick])

    def _mirostat_v2(self, logits: torch.Tensor) -> int:
        p = self.params
        values, indices = torch.sort(logits / max(p.temperature, 1e-6), descending=True)
        probs = torch.softmax(values, dim=-1)
        surprise = -torch.log2(probs)
        keep = max(1, int((surprise <= self.mu).sum()))
        token, _ = self._draw(values[:keep], indices[:keep])
        observed = -math.log2(float(probs[(indices == token).nonzero()[0, 0]]))
        self.mu -= p.mirostat_eta * (observed - p.mirostat_tau)
        return token

    def _mirostat_v1(self, logits: torch.Tensor, m: int = 100) -> int:
        p = self.params
        values, indices = torch.sort(logits / max(p.temperature, 1e-6), descending=True)
        probs = torch.softmax(values, dim=-1)
        # estimate the Zipf exponent s_hat from the top m probabilities (llama.cpp's formula)
        top = probs[: min(m, probs.numel())].double()
        i = torch.arange(1, top.numel(), dtype=torch.float64)
        t_i = torch.log((i + 1) / i)
        b_i = torch.log(top[:-1] / top[1:])
        s_hat = float((t_i * b_i).sum() / (t_i * t_i).sum()) if top.numel() > 1 else 1.0
        epsilon_hat = s_hat - 1.0
        n = float(self.vocab_size)
        denominator = 1.0 - n ** (-epsilon_hat)
        if epsilon_hat <= 0 or denominator <= 0 or s_hat <= 0:
            k = values.numel()  # flat distribution: no truncation
        else:
            k_est = ((epsilon_hat * 2.0**self.mu) / denominator) ** (1.0 / s_hat)
            k = int(min(max(k_est, 1.0), float(values.numel())))
        token, _ = self._draw(values[:k], indices[:k])
        observed = -math.log2(float(probs[(indices == token).nonzero()[0, 0]]))
        self.mu -= p.mirostat_eta * (observed - p.mirostat_tau)
        return token
