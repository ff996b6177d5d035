"""Quantized dtypes, the platform matrix and the integer format of weights.

The numerics follow the best public evidence about Rockchip's NPU formats (see
``shared/reference/rkllm-toolkit.md``): symmetric quantization, fp16 scales, int8 weights in
[-127, 127] with ``s = max|W| / 127``, int4 weights in [-8, 7] with ``s = max|W| / 7``, one scale
per output channel or, for ``_gN`` dtypes, one per output channel per block of N input
channels. Activations of ``a8`` dtypes are int8 with one scale per tensor; ``a16`` activations
stay fp16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import BuildConfigError

if TYPE_CHECKING:  # torch is only needed when quantizing, never on the board
    import torch

#: Largest context Rockchip's toolkit accepts; it must also be a multiple of 32.
MAX_CONTEXT = 16384
CONTEXT_MULTIPLE = 32

#: How ``a8`` layers scale their activations (see :mod:`.qlinear`): a calibrated scale per
#: tensor, one per call, or one per token.
ACT_MODES = ("static", "dynamic", "per_token")


@dataclass(frozen=True)
class QuantDtype:
    """One of Rockchip's ``quantized_dtype`` values."""

    name: str
    weight_bits: int
    act_bits: int | None  # None: activations stay fp16
    group_size: int | None  # None: one scale per output channel

    @property
    def qmin(self) -> int:
        """Smallest weight integer (int4: -8; int8: -127, symmetric so that -q is representable)."""
        return -8 if self.weight_bits == 4 else -127

    @property
    def qmax(self) -> int:
        """Largest weight integer; also the divisor of the scale (``s = T / qmax``)."""
        return 7 if self.weight_bits == 4 else 127

    @property
    def quantizes_activations(self) -> bool:
        return self.act_bits is not None

    @property
    def family(self) -> str:
        """The dtype without its group suffix (``w4a16_g32`` -> ``w4a16``)."""
        return self.name.split("_g")[0]

    def with_group(self, group_size: int | None) -> QuantDtype:
        """The dtype of the same bit widths with another group size (must exist)."""
        name = self.family if group_size is None else f"{self.family}_g{group_size}"
        return parse_dtype(name)


DTYPES: dict[str, QuantDtype] = {
    d.name: d
    for d in (
        QuantDtype("w4a16", 4, None, None),
        QuantDtype("w4a16_g32", 4, None, 32),
        QuantDtype("w4a16_g64", 4, None, 64),
        QuantDtype("w4a16_g128", 4, None, 128),
        QuantDtype("w8a8", 8, 8, None),
        QuantDtype("w8a8_g128", 8, 8, 128),
        QuantDtype("w8a8_g256", 8, 8, 256),
        QuantDtype("w8a8_g512", 8, 8, 512),
        QuantDtype("w4a8_g32", 4, 8, 32),
    )
}


@dataclass(frozen=True)
class Platform:
    """A Rockchip SoC: the dtypes its NPU runs and its number of NPU cores."""

    name: str
    dtypes: tuple[str, ...]
    npu_cores: tuple[int, ...]


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform("rk3588", ("w8a8", "w8a8_g128", "w8a8_g256", "w8a8_g512"), (1, 2, 3)),
        Platform("rk3576", ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w8a8"), (1, 2)),
        Platform("rv1126b", ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w8a8"), (1,)),
        Platform("rk3562", ("w8a8", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w4a8_g32"), (1,)),
    )
}

#: GGUF tensor types that are exactly one of our dtypes (llama.cpp q4_0: int4 blocks of 32 with
#: one fp16 scale, q8_0: int8 blocks of 32). Rockchip's toolkit accepts q4_0 and f16 only.
GGUF_TYPE_TO_DTYPE: dict[str, str] = {"Q4_0": "w4a16_g32"}


def parse_dtype(name: str) -> QuantDtype:
    """The :class:`QuantDtype` called ``name`` (case-insensitive, as in Rockchip's examples)."""
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise BuildConfigError(
            f"unknown quantized_dtype {name!r}: choose one of {', '.join(DTYPES)}"
        )
    return DTYPES[key]


def parse_platform(name: str) -> Platform:
    """The :class:`Platform` called ``name`` (case-insensitive: ``RK3588`` or ``rk3588``)."""
    key = str(name).strip().lower()
    if key not in PLATFORMS:
        raise BuildConfigError(
            f"unknown target_platform {name!r}: choose one of"
            f" {', '.join(p.upper() for p in PLATFORMS)}"
        )
    return PLATFORMS[key]


def check_platform(dtype: QuantDtype, platform: Platform, num_npu_core: int) -> None:
    """Raise :class:`BuildConfigError` unless ``platform`` runs ``dtype`` on ``num_npu_core``."""
    if dtype.name not in platform.dtypes:
        raise BuildConfigError(
            f"{platform.name.upper()} does not run quantized_dtype {dtype.name!r}: it accepts"
            f" {', '.join(platform.dtypes)}" + _other_platforms(dtype.name)
        )
    if isinstance(num_npu_core, bool) or num_npu_core not in platform.npu_cores:
        raise BuildConfigError(
            f"num_npu_core={num_npu_core!r} is not valid on {platform.name.upper()}: it has"
            f" {max(platform.npu_cores)} NPU core(s), choose one of"
            f" {', '.join(map(str, platform.npu_cores))}"
        )


def _other_platforms(dtype_name: str) -> str:
    others = [p.name.upper() for p in PLATFORMS.values() if dtype_name in p.dtypes]
    return f" ({dtype_name} runs on {', '.join(others)})" if others else ""


def check_group_size(dtype: QuantDtype, layer: str, in_features: int, out_features: int) -> None:
    """Raise unless the group size of ``dtype`` divides both dimensions of ``layer``."""
    g = dtype.group_size
    if g is None:
        return
    bad = [f"{what} {n}" for what, n in (("in", in_features), ("out", out_features)) if n % g]
    if bad:
        raise BuildConfigError(
            f"{dtype.name}: group size {g} does not divide layer {layer} ({', '.join(bad)}"
            f" features); every quantized layer must be a multiple of the group size, so use a"
            f" smaller group or the ungrouped {dtype.family}"
        )


def check_max_context(max_context: int) -> None:
    """Raise unless ``max_context`` is a positive multiple of 32 and at most 16384."""
    if (
        isinstance(max_context, bool)
        or not isinstance(max_context, int)
        or max_context <= 0
        or max_context > MAX_CONTEXT
        or max_context % CONTEXT_MULTIPLE
    ):
        raise BuildConfigError(
            f"max_context={max_context!r} is invalid: it must be a multiple of"
            f" {CONTEXT_MULTIPLE} between {CONTEXT_MULTIPLE} and {MAX_CONTEXT} (e.g. 4096)"
        )


# --------------------------------------------------------------------------- integer format


def _blocks(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View ``w`` [out, in] as [out, n_groups, group] (one group of ``in`` when ungrouped)."""
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    return w.reshape(out_f, in_f // g, g)


def weight_scales(
    w: torch.Tensor, dtype: QuantDtype, threshold: torch.Tensor | None = None
) -> torch.Tensor:
    """The fp16 scales [out, n_groups] of ``w`` [out, in]: ``T / qmax`` with ``T = max|block|``.

    ``threshold`` (same shape as the result) replaces ``max|block|`` when a clipping search or
    a calibration rule chose a smaller range. A block of zeros gets scale 1 (its integers are 0).
    """
    t = _blocks(w.float(), dtype.group_size).abs().amax(dim=-1) if threshold is None else threshold
    return scales_from_threshold(t, dtype)


def scales_from_threshold(t: torch.Tensor, dtype: QuantDtype) -> torch.Tensor:
    """fp16 scales ``T / qmax``; a zero threshold gets scale 1 (all its integers are 0)."""
    import torch

    s = (t.float() / dtype.qmax).to(torch.float16)
    # fp16 underflow would make an all-zero scale for a tiny but non-zero block; the smallest
    # positive fp16 keeps the integers in range instead (they saturate at qmax).
    tiny = torch.finfo(torch.float16).tiny
    tiny_t = torch.tensor(tiny, dtype=s.dtype, device=s.device)
    s = torch.where(s == 0, torch.where(t > 0, tiny_t, 1.0), s)
    return s.to(torch.float16)


def quantize_weight(
    w: torch.Tensor, dtype: QuantDtype, scales: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round ``w`` [out, in] to integers: ``q = clamp(round(w / s), qmin, qmax)``.

    Returns ``(q, scales)``: ``q`` int8 [out, in] (int4 values also live in int8 here; the
    export packs them), ``scales`` fp16 [out, n_groups]. The division uses the fp16 scale so
    that ``q * s`` is exactly what the runtime reconstructs.
    """
    import torch

    s = weight_scales(w, dtype) if scales is None else scales.to(torch.float16)
    blocks = _blocks(w.float(), dtype.group_size)
    q = torch.clamp(torch.round(blocks / s.float().unsqueeze(-1)), dtype.qmin, dtype.qmax)
    return q.reshape(w.shape).to(torch.int8), s


def dequantize_weight(
    q: torch.Tensor, scales: torch.Tensor, group_size: int | None
) -> torch.Tensor:
    """``q * s`` in fp32 [out, in] (exact: small integers times fp16 values)."""
    blocks = _blocks(q.float(), group_size)
    return (blocks * scales.float().unsqueeze(-1)).reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values [out, in] (in int8) into uint8 [out, in/2]: low nibble = even column."""
    import torch

    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 [out, in/2] -> int8 [out, in] in [-8, 7]."""
    import torch

    lo = (packed & 0xF).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    both = torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)
    return torch.where(both > 7, both - 16, both).to(torch.int8)
