"""Simulated quantized Linear layers: the NPU's integer arithmetic reproduced in torch.

:class:`QuantLinear` holds exactly what an export stores (integer weights, fp16 scales, the
static activation scale) and computes from those tensors only, so a model rebuilt from an
export gives bit-identical logits to the in-memory model it was exported from.

- ``a16`` dtypes: ``y = fp16(x) @ (q * s)^T``, accumulated in fp32 (activations stay fp16).
- ``a8`` dtypes: ``q_x = clamp(round(x / s_x), -127, 127)`` with one scale per tensor;
  ``y = (q_x @ q^T) * s_x * s[o]`` in fp32, per block of N input channels for ``_gN`` dtypes.
  ``s_x`` is calibrated (``static``, the default) or ``max|x| / 127`` of each call (``dynamic``).
  ``per_token`` (one scale per token, ``max|x_t| / 127``) is not known to be what Rockchip's
  runtime does; it bounds what a runtime scaling each token on the fly (as any per-call scale
  does while decoding one token at a time) would reach.
"""

from __future__ import annotations

import torch
from torch import nn

from .formats import ACT_MODES, QuantDtype, dequantize_weight, parse_dtype

__all__ = ["ACT_MODES", "QuantLinear"]
_FP16_MAX = 65504.0


class QuantLinear(nn.Module):
    """A Linear layer whose weight is ``qweight * scales`` and whose activations may be int8."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dtype: QuantDtype | str,
        bias: bool = False,
        act_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.qdtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
        if self.qdtype.quantizes_activations:
            act_mode = act_mode or "static"
            if act_mode not in ACT_MODES:
                raise ValueError(f"act_mode must be one of {ACT_MODES}, not {act_mode!r}")
        else:
            act_mode = None
        self.act_mode = act_mode
        g = self.qdtype.group_size or in_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer(
            "scales", torch.ones(out_features, in_features // g, dtype=torch.float16)
        )
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer(
            "act_scale", torch.ones((), dtype=torch.float32) if act_mode == "static" else None
        )
        self._cache: torch.Tensor | None = None

    @classmethod
    def from_quantized(
        cls,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        dtype: QuantDtype | str,
        bias: torch.Tensor | None = None,
        act_mode: str | None = None,
        act_scale: float | torch.Tensor | None = None,
    ) -> QuantLinear:
        """Build a layer from its integer weights [out, in] and fp16 scales [out, n_groups]."""
        out_f, in_f = qweight.shape
        layer = cls(in_f, out_f, dtype, bias=bias is not None, act_mode=act_mode)
        layer.qweight = qweight.to(torch.int8).contiguous()
        layer.scales = scales.to(torch.float16).contiguous()
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        if layer.act_mode == "static":
            if act_scale is None:
                raise ValueError("a static-activation layer needs its calibrated act_scale")
            layer.act_scale = torch.as_tensor(act_scale, dtype=torch.float32).reshape(())
        return layer

    def use_dynamic_activations(self, mode: str = "dynamic") -> None:
        """Scale activations per call (or ``per_token``) from now on; the integer weights stay
        as they are."""
        if mode not in ACT_MODES[1:]:
            raise ValueError(f"mode must be one of {ACT_MODES[1:]}, not {mode!r}")
        if self.act_mode is not None:
            self.act_mode = mode
            self.act_scale = None

    @property
    def group_size(self) -> int | None:
        return self.qdtype.group_size

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight ``q * s`` (fp32), for code that inspects ``.weight``."""
        return dequantize_weight(self.qweight, self.scales, self.group_size)

    def _prepared(self) -> torch.Tensor:
        # Cached float copy of the integers (a8) or of q*s (a16): recomputing it per call would
        # dominate the cost of a forward pass; it is rebuilt when the buffers are replaced.
        key = (self.qweight.data_ptr(), self.scales.data_ptr(), self.qweight.device)
        if self._cache is None or getattr(self, "_cache_key", None) != key:
            if self.act_mode is None:
                self._cache = dequantize_weight(self.qweight, self.scales, self.group_size)
            else:
                self._cache = self.qweight.float()
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        w = self._prepared()
        if self.act_mode is None:
            xh = x2.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).float()
            y = xh @ w.t()
        else:
            if self.act_mode == "static":
                s_x = self.act_scale.float()
            else:
                per_token = self.act_mode == "per_token"
                amax = x2.abs().amax(dim=1, keepdim=True) if per_token else x2.abs().amax()
                s_x = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
            qx = torch.clamp(torch.round(x2 / s_x), -127, 127)
            s_w = self.scales.float()
            g = self.group_size
            if g is None:
                y = (qx @ w.t()) * (s_x * s_w[:, 0])
            else:
                n_groups = self.in_features // g
                xg = qx.reshape(-1, n_groups, g).transpose(0, 1)  # [G, T, g]
                wg = w.reshape(self.out_features, n_groups, g).permute(1, 2, 0)  # [G, g, out]
                partial = torch.bmm(xg, wg) * s_w.t().unsqueeze(1)  # [G, T, out]
                y = partial.sum(dim=0) * s_x
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features},"
            f" dtype={self.qdtype.name}, act_mode={self.act_mode}, bias={self.bias is not None}"
        )
