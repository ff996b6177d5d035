"""Read a ``.rkllm`` file's metadata without the runtime (pure Python).

A ``.rkllm`` file is a GGUF v3 container whose strings (keys, string values, the magic) are
XOR-masked with a fixed 256-byte key that restarts for every string; numbers are plain
(``shared/reference/rkllm-file-format.md``). Reading it lets the engine refuse a model the
runtime would reject with a bare ``-1`` or a crash, and gives the embedding path the model's own
tokenizer. Every key is optional: files from older toolkits differ.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import ChatTemplateParts
from ..errors import ModelFormatError, ModelNotFoundError

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
RKLLM_MAGIC = bytes(a ^ b for a, b in zip(b"GGUF", MASK_KEY[:4], strict=True))  # DA EE B3 36

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {
    U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
    U64: "<Q", I64: "<q", F64: "<d",
}
# Observed platform codes; anything else is reported as the raw value.
PLATFORMS = {0: "RK3588"}
_MAX_STRING = 1 << 26  # 64 MiB: no real metadata string is larger; beyond it the file is corrupt


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


@dataclass(slots=True)
class RKLLMMetadata:
    """What a ``.rkllm`` file says about itself. ``None`` = the file does not say."""

    path: Path
    file_size: int
    gguf_version: int
    tensor_count: int
    values: dict[str, Any] = field(repr=False)
    trailer_version: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """A raw metadata value."""
        return self.values.get(key, default)

    def _arch(self, suffix: str) -> Any:
        arch = self.architecture
        return self.values.get(f"{arch}.{suffix}") if arch else None

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (e.g. ``qwen2``, ``llama``)."""
        return self.values.get("general.architecture")

    @property
    def toolkit_version(self) -> str | None:
        """The rkllm-toolkit release that wrote the file (``rkllm.version`` or the trailer)."""
        v = self.values.get("rkllm.version")
        return str(v) if v is not None else self.trailer_version

    @property
    def platform(self) -> str | None:
        """Target platform (``RK3588`` …); an unknown code is returned as ``code N``."""
        p = self.values.get("rkllm.platform")
        if p is None:
            return None
        if isinstance(p, str):
            return p.upper()
        return PLATFORMS.get(int(p), f"code {p}")

    @property
    def max_context(self) -> int | None:
        """The largest ``max_context_len`` the file was built for."""
        v = self.values.get("rkllm.max_context")
        return int(v) if v is not None else None

    @property
    def context_length(self) -> int | None:
        """The architecture's trained context length."""
        v = self._arch("context_length")
        return int(v) if v is not None else None

    @property
    def hidden_size(self) -> int | None:
        """``<arch>.embedding_length``."""
        v = self._arch("embedding_length")
        return int(v) if v is not None else None

    @property
    def num_layers(self) -> int | None:
        """``<arch>.block_count``."""
        v = self._arch("block_count")
        return int(v) if v is not None else None

    @property
    def vocab_size(self) -> int | None:
        """``<arch>.vocab_size`` or the length of the token list."""
        v = self._arch("vocab_size")
        if v is not None:
            return int(v)
        tokens = self.tokens
        return len(tokens) if tokens else None

    @property
    def tokenizer_model(self) -> str | None:
        """``tokenizer.ggml.model`` (``gpt2`` = byte-level BPE, ``llama`` = SentencePiece)."""
        return self.values.get("tokenizer.ggml.model")

    @property
    def tokens(self) -> list[str] | None:
        """The vocabulary, id order."""
        return self.values.get("tokenizer.ggml.tokens")

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template copied from the Hugging Face tokenizer config."""
        return self.values.get("tokenizer.chat_template")

    @property
    def template_parts(self) -> ChatTemplateParts | None:
        """The runtime's simple template (system / prefix / postfix), if the file has one."""
        keys = ("rkllm.chat_template.system", "rkllm.chat_template.pre", "rkllm.chat_template.post")
        if not any(k in self.values for k in keys):
            return None
        system, pre, post = (str(self.values.get(k, "")) for k in keys)
        return ChatTemplateParts(system=system, prefix=pre, postfix=post)

    def token_text(self, key: str) -> str | None:
        """The token string of an id-valued key such as ``tokenizer.ggml.eos_token_id``."""
        tid = self.values.get(key)
        tokens = self.tokens
        if tid is None or not tokens or not 0 <= int(tid) < len(tokens):
            return None
        return tokens[int(tid)]

    def missing(self) -> list[str]:
        """Keys the checks and the engine use that this file lacks (reported, not fatal)."""
        wanted = [
            "general.architecture", "rkllm.version", "rkllm.platform", "rkllm.max_context",
            "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.chat_template",
        ]
        out = [k for k in wanted if k not in self.values]
        if "rkllm.version" in out and self.trailer_version:
            out.remove("rkllm.version")
        return out


class _Reader:
    """Bounds-checked little-endian reads; every overrun is a ModelFormatError naming where."""

    __slots__ = ("buf", "path", "pos", "what")

    def __init__(self, buf: bytes | mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.what = "header"

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelFormatError(
                f"{self.path} is truncated or corrupt: needed {n} bytes at offset {self.pos}"
                f" while reading {self.what}, but the file has {len(self.buf)} bytes"
            )
        out = self.buf[self.pos : end]
        self.pos = end
        return bytes(out)

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > _MAX_STRING:
            raise ModelFormatError(
                f"{self.path} is corrupt: a string of {n} bytes at offset {self.pos - 8}"
                f" while reading {self.what}"
            )
        return mask(self.take(n)).decode("utf-8", "replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == STRING:
            return self.string()
        fmt = _SCALAR.get(vtype)
        if fmt is not None:
            return self.scalar(fmt)
        if vtype == ARRAY and depth == 0:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype])
                raw = self.take(count * size)  # checks bounds before allocating a list
                return list(struct.unpack(f"<{count}{_SCALAR[etype][1]}", raw))
            if etype == STRING:
                if count * 8 > len(self.buf) - self.pos:
                    self.take(count * 8)  # raises the truncation error
                return [self.string() for _ in range(count)]
            raise ModelFormatError(
                f"{self.path}: unsupported array element type {etype} while reading {self.what}"
            )
        raise ModelFormatError(
            f"{self.path}: unknown GGUF value type {vtype} at offset {self.pos - 4} while"
            f" reading {self.what}"
        )


def read_metadata(path: str | os.PathLike[str]) -> RKLLMMetadata:
    """Parse the metadata of the ``.rkllm`` file at ``path``.

    Raises :class:`ModelNotFoundError` (missing / unreadable) or :class:`ModelFormatError`
    (not an ``.rkllm`` file, truncated, corrupt) with a message naming the problem.
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file {p} does not exist")
    if p.is_dir():
        raise ModelFormatError(
            f"{p} is a directory; the NPU engine loads one .rkllm file (convert a Hugging Face"
            f" directory with the toolkit, or use the PC engine)"
        )
    try:
        fh = open(p, "rb")
    except OSError as exc:
        raise ModelNotFoundError(f"model file {p} cannot be read: {exc}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise ModelFormatError(f"{p} has {size} bytes: too short to be an .rkllm file")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _parse(buf, p, size)
        finally:
            buf.close()


def _parse(buf: mmap.mmap, p: Path, size: int) -> RKLLMMetadata:
    magic = bytes(buf[:4])
    if magic != RKLLM_MAGIC:
        if magic == b"GGUF":
            raise ModelFormatError(
                f"{p} is a plain GGUF file, not an .rkllm file: the NPU runtime cannot load it;"
                f" use the PC engine for GGUF, or convert the model with the rkllm toolkit"
            )
        raise ModelFormatError(
            f"{p} is not an .rkllm file (first bytes {magic.hex(' ')}, expected"
            f" {RKLLM_MAGIC.hex(' ')}); convert the model with the rkllm toolkit"
        )
    r = _Reader(buf, p)
    r.pos = 4
    version = r.scalar("<I")
    if version != 3:
        raise ModelFormatError(f"{p}: container version {version}, only version 3 is known")
    tensor_count = r.scalar("<Q")
    kv_count = r.scalar("<Q")
    if kv_count > size // 13:  # each entry takes at least 13 bytes: the count itself is corrupt
        raise ModelFormatError(
            f"{p} is truncated or corrupt: it claims {kv_count} metadata entries but has only"
            f" {size} bytes"
        )
    values: dict[str, Any] = {}
    for i in range(kv_count):
        r.what = f"metadata entry {i} of {kv_count}"
        key = r.string()
        r.what = f"metadata value {key!r}"
        vtype = r.scalar("<I")
        values[key] = r.value(vtype)
    tail = bytes(buf[max(0, size - 256) :])
    m = re.search(rb"rkllm-toolkit version: ([0-9A-Za-z.\-_]+)", tail)
    trailer = m.group(1).decode("ascii") if m else None
    return RKLLMMetadata(p, size, version, tensor_count, values, trailer)
