"""A compact forward pass for Llama- and Qwen2-style decoders, over a :class:`StaticKVCache`.

transformers' generic forward spends most of a decode step outside the matrix products: mask
construction, cache bookkeeping, three projections where one would do, and (with a mask) a
grouped-query attention path that repeats the keys. This forward computes the same layers
with the same operations in the same order — the rotary tables come from the model's own
rotary module, the norms and attention use the same torch kernels — so logits match the
transformers forward to float rounding (bit for bit on the tested CPUs), with fewer tensor ops:

- q/k/v and gate/up projections are fused into one matrix product each, when they are plain
  ``nn.Linear`` layers (the layer weights become views into the fused matrix: no extra memory);
- any other projection (the toolkit's ``QuantLinear``, for example) is called as a module, so
  quantized exports keep their own numerics;
- the rotary embedding is applied to queries and keys in one pass;
- attention runs on the cached key/value heads directly (no mask, no repeated keys, while
  decoding one token).

Residual additions stay separate from the projections: ``addmm`` would save an op per
projection but rounds differently from transformers for several rows.

Other architectures (and configurations this forward does not reproduce, such as sliding
windows) return ``None`` from :func:`build_decoder` and run through transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import StaticKVCache

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


@dataclass
class _Norm:
    """An RMSNorm as transformers computes it, or any other norm module called as is."""

    module: nn.Module
    weight: torch.Tensor | None
    eps: float

    @classmethod
    def of(cls, module: nn.Module) -> _Norm:
        weight = getattr(module, "weight", None)
        eps = getattr(module, "variance_epsilon", None)
        if type(module).__name__.endswith("RMSNorm") and weight is not None and eps is not None:
            return cls(module, weight, float(eps))
        return cls(module, None, 0.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return self.module(x)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # transformers normalises in float32 and scales in the input dtype
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


@dataclass
class _Layer:
    """One decoder layer's tensors: fused matrices where possible, else the modules."""

    attn_norm: _Norm
    mlp_norm: _Norm
    qkv: torch.Tensor | None  # [q + k + v rows, hidden] when the projections are plain Linear
    qkv_bias: torch.Tensor | None
    projections: tuple[nn.Module, nn.Module, nn.Module]  # q, k, v (used when qkv is None)
    o_proj: nn.Module
    gate_up: torch.Tensor | None  # [2 * intermediate, hidden] when gate/up are plain Linear
    gate_proj: nn.Module
    up_proj: nn.Module
    down_proj: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]


def _is_plain_linear(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def _fuse(modules: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of ``modules``; make the modules views of it."""
    weight = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    biases = [m.bias for m in modules]
    bias = None
    if any(b is not None for b in biases):
        parts = [
            b.detach() if b is not None else weight.new_zeros(m.out_features)
            for m, b in zip(modules, biases, strict=True)
        ]
        bias = torch.cat(parts).contiguous()
    start = 0
    with torch.no_grad():
        for m in modules:
            end = start + m.out_features
            m.weight.data = weight[start:end]  # contiguous rows: the same memory, no copy
            if m.bias is not None and bias is not None:
                m.bias.data = bias[start:end]
            start = end
    return weight, bias


def _unsupported_reason(model: Any) -> str | None:
    config = getattr(model, "config", None)
    arch = getattr(config, "model_type", None)
    if arch not in SUPPORTED_ARCHITECTURES:
        return f"architecture {arch!r} is not one of {SUPPORTED_ARCHITECTURES}"
    base = getattr(model, "model", None)
    if base is None or not all(
        hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")
    ):
        return "the model does not have the Llama module layout"
    if not hasattr(model, "lm_head"):
        return "the model has no lm_head"
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return "sliding-window attention layers"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    for layer in base.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return "a layer without self_attn/mlp"
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        if not all(hasattr(attn, n) for n in names):
            return "attention without q/k/v/o projections"
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return "an MLP without gate/up/down projections"
    return None


def build_decoder(model: Any, *, fuse: bool = True) -> CompactDecoder | None:
    """The compact forward for ``model``, or ``None`` when transformers' forward must run it.

    ``fuse=False`` leaves the model's weights as they are (a model the caller still owns and
    may change): every projection then runs as its own module.
    """
    reason = _unsupported_reason(model)
    if reason is not None:
        log.debug("compact decoder not used: %s", reason)
        return None
    return CompactDecoder(model, fuse=fuse)


class CompactDecoder:
    """Forwards tokens through a Llama/Qwen2 causal LM, appending to a :class:`StaticKVCache`."""

    def __init__(self, model: Any, *, fuse: bool = True) -> None:
        config = model.config
        self.model = model
        base = model.model
        self.embed_tokens = base.embed_tokens
        self.rotary_emb = base.rotary_emb
        self.final_norm = _Norm.of(base.norm)
        self.lm_head = model.lm_head
        first = base.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.scaling = float(first.scaling)
        layers = base.layers[: config.num_hidden_layers]
        self.layers = [self._layer(layer, fuse) for layer in layers]
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device

    @staticmethod
    def _layer(layer: Any, fuse: bool) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        qkv = qkv_bias = gate_up = None
        if fuse and all(_is_plain_linear(m) for m in projections):
            qkv, qkv_bias = _fuse(projections)
        if fuse and _is_plain_linear(mlp.gate_proj) and _is_plain_linear(mlp.up_proj):
            if mlp.gate_proj.bias is None and mlp.up_proj.bias is None:
                gate_up, _ = _fuse((mlp.gate_proj, mlp.up_proj))
        return _Layer(
            attn_norm=_Norm.of(layer.input_layernorm),
            mlp_norm=_Norm.of(layer.post_attention_layernorm),
            qkv=qkv,
            qkv_bias=qkv_bias,
            projections=projections,
            o_proj=attn.o_proj,
            gate_up=gate_up,
            gate_proj=mlp.gate_proj,
            up_proj=mlp.up_proj,
            down_proj=mlp.down_proj,
            act=mlp.act_fn,
        )

    def new_cache(self, capacity: int) -> StaticKVCache:
        """An empty cache for up to ``capacity`` positions."""
        return StaticKVCache(
            len(self.layers),
            self.num_kv_heads,
            self.head_dim,
            capacity,
            dtype=self.dtype,
            device=self.device,
        )

    def forward(
        self,
        cache: StaticKVCache,
        ids: Sequence[int] | None = None,
        embeds: torch.Tensor | None = None,
        *,
        all_rows: bool = False,
    ) -> torch.Tensor:
        """Append ``ids`` (or ``[n, hidden]`` ``embeds``) to ``cache``; the last logits row
        (``[vocab]``), or with ``all_rows`` the logits of every new position (``[n, vocab]``)."""
        if embeds is not None:
            x = embeds.to(device=self.device, dtype=self.dtype)
        else:
            x = self.embed_tokens(torch.tensor(list(ids or ()), device=self.device))
        n_new = x.shape[0]
        cache.reserve(n_new)
        past = cache.length
        positions = torch.arange(past, past + n_new, device=self.device).unsqueeze(0)
        cos, sin = self.rotary_emb(x.unsqueeze(0), position_ids=positions)
        rope = (cos[0].unsqueeze(1), sin[0].unsqueeze(1))  # [n_new, 1, head_dim]
        mask = None
        if n_new > 1 and past > 0:  # causal over the new rows, everything before is visible
            rows = torch.arange(n_new, device=self.device).unsqueeze(1)
            cols = torch.arange(past + n_new, device=self.device).unsqueeze(0)
            mask = cols <= rows + past
        for index, layer in enumerate(self.layers):
            x = self._layer_forward(index, layer, x, cache, rope, mask)
        cache.advance(n_new)
        if all_rows:
            return self.lm_head(self.final_norm(x))
        return self.lm_head(self.final_norm(x[-1:]))[0]

    def close(self) -> None:
        """Nothing to release: the tensors are the model's (freed with it)."""

    def _layer_forward(
        self,
        index: int,
        layer: _Layer,
        x: torch.Tensor,
        cache: StaticKVCache,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        n_new = x.shape[0]
        hd, nh, nkv = self.head_dim, self.num_heads, self.num_kv_heads
        h = layer.attn_norm(x)
        if layer.qkv is not None:
            qkv = F.linear(h, layer.qkv, layer.qkv_bias)
            qk = _rotate(qkv[:, : (nh + nkv) * hd].view(n_new, nh + nkv, hd), rope)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, (nh + nkv) * hd :].view(n_new, nkv, hd)
        else:
            q_proj, k_proj, v_proj = layer.projections
            q = _rotate(q_proj(h).view(n_new, nh, hd), rope)
            k = _rotate(k_proj(h).view(n_new, nkv, hd), rope)
            v = v_proj(h).view(n_new, nkv, hd)
        cache.write(index, k.transpose(0, 1), v.transpose(0, 1))
        keys, values = cache.layer(index, cache.length + n_new)
        attn = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            keys.unsqueeze(0),
            values.unsqueeze(0),
            attn_mask=mask,
            is_causal=mask is None and n_new > 1,
            scale=self.scaling,
            enable_gqa=nh != nkv,
        )
        attn = attn[0].transpose(0, 1).reshape(n_new, nh * hd)
        x = x + layer.o_proj(attn)
        h = layer.mlp_norm(x)
        if layer.gate_up is not None:
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
        else:
            gate, up = layer.gate_proj(h), layer.up_proj(h)
        return x + layer.down_proj(layer.act(gate) * up)


def _rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of ``[n, heads, head_dim]`` (transformers' rotate-half convention)."""
    cos, sin = rope
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


