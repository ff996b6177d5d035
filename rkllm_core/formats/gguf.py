"""The GGUF container, read in bounded memory: plain GGUF files and the masked ``.rkllm`` kind.

A ``.rkllm`` file is a GGUF v3 container whose strings are XOR-masked with a fixed key
(``shared/reference/rkllm-file-format.md``), so one reader serves both. It never trusts a count
or a length: each is checked against the bytes left in the file *before* anything is allocated,
and every failure is a :class:`~rkllm_core.errors.ModelFormatError` naming the field and its
offset. Numeric arrays are kept as numpy arrays (one byte per byte of file, where a list of
Python ints would take up to 18), so a corrupt file costs at most a small multiple of its size.

Values whose type is wrong for their key are reported by the typed accessors
(:meth:`GGUFValues.integer`, :meth:`GGUFValues.string` …), again as ModelFormatError.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
TYPE_NAMES = ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64",
              "i64", "f64")
_SCALAR = {
    U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
    U64: "<Q", I64: "<q", F64: "<d",
}
_NUMPY = {
    U8: "<u1", I8: "<i1", U16: "<u2", I16: "<i2", U32: "<u4", I32: "<i4", F32: "<f4",
    BOOL: "<u1", U64: "<u8", I64: "<i8", F64: "<f8",
}
_SIZE = {t: struct.calcsize(f) for t, f in _SCALAR.items()}

GGUF_MAGIC = b"GGUF"
# No real metadata string (a chat template, a token) comes near this; beyond it the length
# field itself is corrupt.
MAX_STRING = 1 << 26
MAX_DIMS = {"gguf": 4, "rkllm": 8}  # GGML_MAX_DIMS; .rkllm directories are not documented
DEFAULT_ALIGNMENT = 32

# ggml tensor types: id -> (name, elements per block, bytes per block). Facts of the format.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
# general.file_type (llama.cpp's llama_ftype) -> the name users know.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}

Kind = Literal["gguf", "rkllm"]


def describe_value(value: Any) -> str:
    """A short name of a parsed value's type, for error messages."""
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype.name} ({value.size} items)"
    if isinstance(value, list):
        return f"an array of {len(value)} strings"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


class GGUFValues:
    """Typed access to parsed metadata; a value of the wrong type is a ModelFormatError."""

    path: Path
    values: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        """A raw value (numeric arrays as lists)."""
        value = self.values.get(key, default)
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value

    def _wrong(self, key: str, value: Any, wanted: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: metadata {key!r} should be {wanted} but is {describe_value(value)};"
            f" the file is corrupt or was written by an incompatible tool"
        )

    def integer(self, key: str, *, minimum: int | None = 0) -> int | None:
        """An integer value (any integer type, not bool); None if absent."""
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, value, "an integer")
        if minimum is not None and value < minimum:
            raise ModelFormatError(f"{self.path}: metadata {key!r} is {value}, below {minimum}")
        return value

    def number(self, key: str) -> float | None:
        """A finite number (integer or float type); None if absent."""
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(key, value, "a number")
        if not math.isfinite(value):
            raise ModelFormatError(f"{self.path}: metadata {key!r} is {value}, not finite")
        return float(value)

    def boolean(self, key: str) -> bool | None:
        """A bool value; None if absent."""
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self._wrong(key, value, "a bool")
        return value

    def string(self, key: str) -> str | None:
        """A string value; None if absent."""
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong(key, value, "a string")
        return value

    def strings(self, key: str) -> list[str] | None:
        """An array of strings; None if absent."""
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._wrong(key, value, "an array of strings")
        return value

    def numbers(self, key: str) -> np.ndarray | None:
        """A numeric array; None if absent."""
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, np.ndarray):
            raise self._wrong(key, value, "a numeric array")
        return value


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of the tensor directory."""

    name: str
    shape: tuple[int, ...]  # GGUF order (innermost dimension first)
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        """``Q4_K``, ``F16`` … (``type N`` when unknown)."""
        known = GGML_TYPES.get(self.ggml_type)
        return known[0] if known else f"type {self.ggml_type}"

    @property
    def n_elements(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Bytes of its data; None for a type this reader does not know."""
        known = GGML_TYPES.get(self.ggml_type)
        if known is None:
            return None
        _, block, size = known
        return -(-self.n_elements // block) * size


@dataclass(slots=True)
class GGUFFile(GGUFValues):
    """A parsed container: metadata, tensor directory and where the data section starts."""

    path: Path
    kind: Kind
    file_size: int
    version: int
    tensor_count: int
    values: dict[str, Any] = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False, default_factory=list)
    data_offset: int = 0
    alignment: int = DEFAULT_ALIGNMENT

    @property
    def architecture(self) -> str | None:
        """``general.architecture``."""
        return self.string("general.architecture")

    def arch_integer(self, suffix: str) -> int | None:
        """``<architecture>.<suffix>`` as an integer."""
        arch = self.architecture
        return self.integer(f"{arch}.{suffix}") if arch else None

    def file_type(self) -> str | None:
        """The quantization users know (``Q4_K_M``): ``general.file_type``, else the tensor
        type holding most weights."""
        code = self.integer("general.file_type")
        if code is not None and code in FILE_TYPES:
            return FILE_TYPES[code]
        return self.dominant_tensor_type()

    def dominant_tensor_type(self, min_dims: int = 1) -> str | None:
        """The tensor type holding most values among tensors of at least ``min_dims``."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            if len(t.shape) >= min_dims:
                counts[t.type_name] = counts.get(t.type_name, 0) + t.n_elements
        return max(counts, key=counts.__getitem__) if counts else None

    def check_complete(self) -> None:
        """Refuse a truncated file: the data section and every tensor of a known type must lie
        inside the file (what a loader would otherwise find out with an obscure error)."""
        if self.data_offset > self.file_size:
            raise ModelFormatError(
                f"{self.path} is truncated: its data section starts at offset"
                f" {self.data_offset} but the file has {self.file_size} bytes"
            )
        data_size = self.file_size - self.data_offset
        for t in self.tensors:
            size = t.nbytes
            if size is None:
                continue
            if t.offset + size > data_size:
                raise ModelFormatError(
                    f"{self.path} is truncated or corrupt: tensor {t.name!r} ({t.type_name},"
                    f" {size} bytes at data offset {t.offset}) ends at file offset"
                    f" {self.data_offset + t.offset + size}, but the file has"
                    f" {self.file_size} bytes; download or convert the file again"
                )


# --- masking (the .rkllm kind) ---------------------------------------------------------------

MASK_KEY = bytes.fromhex(
    "9da9e670cce76f6662774b69b88b45a1a6fb80a77a92d6f3e80044f8da42e34e"
    "71ff7dcd82069a6495838fa465eadead6d1cf661be8502fc496cf554b43b5dc3"
    "32071db1881910750b76373fb54c91c80a72d21ebf99ecae21af2da809d41fb0"
    "8d3d9f2815d7e1c76a6bd9bc1bc41217a54d13358eee258184205c98367fcf73"
    "5147118987fe7b182f6efdd193cb03f122f0f23c5958c1904aed8660b2232e56"
    "a314bb5bd89b16ba745fdff47e30c9ac9401e968509e318cfa97b6550fa0e2a2"
    "b35ee057ce29d0050d7c3a2cca34e40ceb04d55239c04633789626db38272b63"
    "f9efd3b924e59c48434f8a0ebdf75a67aa7941c2ab533eb72adcc51a0840ddc6"
)
RKLLM_MAGIC = bytes(a ^ b for a, b in zip(GGUF_MAGIC, MASK_KEY[:4], strict=True))  # DA EE B3 36


def mask(data: bytes) -> bytes:
    """XOR ``data`` with the key from index 0 (masking and unmasking are the same operation)."""
    n = len(data)
    if n == 0:
        return b""
    key = MASK_KEY * (n // 256 + 1) if n > 256 else MASK_KEY
    # One big-int XOR is ~50x faster than a per-byte generator for vocabularies of 150k tokens.
    return (int.from_bytes(data, "little") ^ int.from_bytes(key[:n], "little")).to_bytes(
        n, "little"
    )


# --- the reader ------------------------------------------------------------------------------


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes."""

    __slots__ = ("buf", "masked", "path", "pos", "size", "what")

    def __init__(self, buf: bytes | mmap.mmap, path: Path, masked: bool) -> None:
        self.buf = buf
        self.size = len(buf)
        self.path = path
        self.masked = masked
        self.pos = 0
        self.what = "the header"

    def error(self, problem: str, at: int | None = None) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path} is truncated or corrupt: {problem} at offset"
            f" {self.pos if at is None else at} while reading {self.what}"
            f" (the file has {self.size} bytes)"
        )

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise self.error(f"needed {n} bytes for {what}, {self.size - self.pos} left")

    def scalar(self, vtype: int) -> Any:
        size = _SIZE[vtype]
        self.need(size, TYPE_NAMES[vtype])
        (value,) = struct.unpack_from(_SCALAR[vtype], self.buf, self.pos)
        self.pos += size
        return value

    def u32(self) -> int:
        return int(self.scalar(U32))

    def u64(self) -> int:
        return int(self.scalar(U64))

    def string(self) -> str:
        start = self.pos
        n = self.u64()
        if n > MAX_STRING:
            raise self.error(f"a string claims {n} bytes", start)
        self.need(n, f"a string of {n} bytes (length at offset {start})")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return (mask(raw) if self.masked else raw).decode("utf-8", "replace")

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype in _SCALAR:
            return self.scalar(vtype)
        if vtype == ARRAY:
            return self.array()
        raise self.error(f"unknown GGUF value type {vtype}", self.pos - 4)

    def array(self) -> Any:
        start = self.pos
        etype = self.u32()
        count = self.u64()
        if etype in _SCALAR:
            size = _SIZE[etype]
            # Checked before numpy allocates anything: a corrupt count cannot cost memory.
            if count > self.left() // size:
                raise self.error(f"an array claims {count} items of {size} bytes", start)
            arr = np.frombuffer(self.buf, _NUMPY[etype], count, self.pos).copy()
            self.pos += count * size
            return arr.astype(bool) if etype == BOOL else arr
        if etype == STRING:
            if count > self.left() // 8:  # every string takes at least its 8-byte length
                raise self.error(f"an array claims {count} strings", start)
            return [self.string() for _ in range(count)]
        if etype == ARRAY:
            raise self.error("an array of arrays (not used by model files; not read)", start)
        raise self.error(f"unknown array element type {etype}", start)


def open_container(
    path: str | os.PathLike[str], expect: Kind, *, tensors: bool = True
) -> GGUFFile:
    """Parse the container at ``path``: ``expect`` says which kind the caller needs.

    Raises :class:`ModelNotFoundError` (missing / unreadable) or :class:`ModelFormatError`
    (wrong kind, truncated, corrupt) with a message naming the field and offset.
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file {p} does not exist")
    if p.is_dir():
        raise ModelFormatError(f"{p} is a directory, not a {_KIND_NAME[expect]} file")
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise ModelNotFoundError(f"model file {p} cannot be read: {exc}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise ModelFormatError(
                f"{p} has {size} bytes: too short to be {_KIND_ARTICLE[expect]} file")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return parse_container(buf, p, expect, tensors=tensors)
        finally:
            buf.close()


_KIND_NAME = {"gguf": "GGUF", "rkllm": ".rkllm"}
_KIND_ARTICLE = {"gguf": "a GGUF", "rkllm": "an .rkllm"}


def parse_container(
    buf: bytes | mmap.mmap, p: Path, expect: Kind, *, tensors: bool = True
) -> GGUFFile:
    """Parse an in-memory (or mapped) container; see :func:`open_container`."""
    size = len(buf)
    magic = bytes(buf[:4])
    if expect == "gguf" and magic != GGUF_MAGIC:
        hint = " (an NPU .rkllm file: use the NPU engine)" if magic == RKLLM_MAGIC else ""
        raise ModelFormatError(
            f"{p} is not a GGUF file (first bytes {magic.hex(' ')}, expected"
            f" {GGUF_MAGIC.hex(' ')}){hint}; download or convert the model again"
        )
    if expect == "rkllm" and magic != RKLLM_MAGIC:
        if magic == GGUF_MAGIC:
            raise ModelFormatError(
                f"{p} is a plain GGUF file, not an .rkllm file: the NPU runtime cannot load it;"
                f" use the PC engine for GGUF, or convert the model with the rkllm toolkit"
            )
        raise ModelFormatError(
            f"{p} is not an .rkllm file (first bytes {magic.hex(' ')}, expected"
            f" {RKLLM_MAGIC.hex(' ')}); convert the model with the rkllm toolkit"
        )
    r = _Cursor(buf, p, masked=expect == "rkllm")
    r.pos = 4
    version = r.u32()
    known = (3,) if expect == "rkllm" else (2, 3)
    if version not in known:
        raise ModelFormatError(
            f"{p}: container version {version}, only version"
            f" {' and '.join(map(str, known))} {'is' if len(known) == 1 else 'are'} known"
        )
    tensor_count = r.u64()
    kv_count = r.u64()
    if kv_count > r.left() // 13:  # each entry takes at least 13 bytes: the count is corrupt
        raise ModelFormatError(
            f"{p} is truncated or corrupt: it claims {kv_count} metadata entries (offset 16)"
            f" but has only {size} bytes"
        )
    values: dict[str, Any] = {}
    where: dict[str, int] = {}
    for i in range(kv_count):
        r.what = f"metadata entry {i} of {kv_count}"
        start = r.pos
        key = r.string()
        if key in where:
            raise ModelFormatError(
                f"{p} is corrupt: metadata key {key!r} appears twice (offsets {where[key]} and"
                f" {start}); a reader cannot tell which value is meant"
            )
        where[key] = start
        r.what = f"metadata value {key!r}"
        vtype = r.u32()
        values[key] = r.value(vtype)
    out = GGUFFile(p, expect, size, version, tensor_count, values)
    if not tensors:
        return out
    if tensor_count > r.left() // 24:  # name length, n_dims, type, offset: 24 bytes at least
        raise ModelFormatError(
            f"{p} is truncated or corrupt: it claims {tensor_count} tensors (offset 8) but only"
            f" {r.left()} bytes follow the metadata (at offset {r.pos})"
        )
    max_dims = MAX_DIMS[expect]
    infos: list[TensorInfo] = []
    for i in range(tensor_count):
        r.what = f"tensor {i} of {tensor_count} in the tensor directory"
        name = r.string()
        r.what = f"tensor {name!r} in the tensor directory"
        n_dims = r.u32()
        if n_dims > max_dims:
            raise r.error(f"{n_dims} dimensions (at most {max_dims})", r.pos - 4)
        r.need(8 * n_dims, f"{n_dims} dimensions")
        shape = struct.unpack_from(f"<{n_dims}Q", buf, r.pos)
        r.pos += 8 * n_dims
        ggml_type = r.u32()
        offset = r.u64()
        infos.append(TensorInfo(name, tuple(shape), ggml_type, offset))
    out.tensors = infos
    alignment = out.integer("general.alignment")
    if alignment is None:
        alignment = DEFAULT_ALIGNMENT
    if alignment == 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise ModelFormatError(
            f"{p}: general.alignment is {alignment}, not a power of two up to 1 MiB")
    out.alignment = alignment
    out.data_offset = r.pos + (-r.pos % alignment)
    return out


def read_gguf(path: str | os.PathLike[str], *, tensors: bool = True) -> GGUFFile:
    """Parse the plain GGUF file at ``path`` (metadata and, by default, the tensor directory)."""
    return open_container(path, "gguf", tensors=tensors)


def check_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """What a loader must know before it hands a GGUF file to transformers: a complete file of
    a named architecture; every problem a ModelFormatError naming it."""
    f = read_gguf(path)
    f.check_complete()
    if f.architecture is None:
        raise ModelFormatError(f"{f.path} has no general.architecture: not a model file")
    if not f.tensors:
        raise ModelFormatError(f"{f.path} holds no tensors: not a model file")
    return f
