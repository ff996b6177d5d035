"""Test helpers: small valid GGUF and .rkllm files written from the documented layouts.

Written independently of ``rkllm_core.formats`` so the readers are tested against the format,
not against themselves. Both files carry real tensor directories and data sections, so
truncation and corrupt offsets can be exercised.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

KEY = bytes.fromhex(  # the documented mask key (shared/reference/rkllm-file-format.md)
    "9da9e670cce76f6662774b69b88b45a1a6fb80a77a92d6f3e80044f8da42e34e"
    "71ff7dcd82069a6495838fa465eadead6d1cf661be8502fc496cf554b43b5dc3"
    "32071db1881910750b76373fb54c91c80a72d21ebf99ecae21af2da809d41fb0"
    "8d3d9f2815d7e1c76a6bd9bc1bc41217a54d13358eee258184205c98367fcf73"
    "5147118987fe7b182f6efdd193cb03f122f0f23c5958c1904aed8660b2232e56"
    "a314bb5bd89b16ba745fdff47e30c9ac9401e968509e318cfa97b6550fa0e2a2"
    "b35ee057ce29d0050d7c3a2cca34e40ceb04d55239c04633789626db38272b63"
    "f9efd3b924e59c48434f8a0ebdf75a67aa7941c2ab533eb72adcc51a0840ddc6"
)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
       U64: "<Q", I64: "<q", F64: "<d"}


def mask_bytes(data: bytes) -> bytes:
    """Byte i XOR key[i % 256]."""
    return bytes(b ^ KEY[i % 256] for i, b in enumerate(data))
Entry = tuple[str, int, Any]
# (name, shape, ggml type, bytes): F32 = 0 (4 bytes each), F16 = 1, Q8_0 = 8 (34 per 32)
Tensor = tuple[str, tuple[int, ...], int, int]


def _string(text: str, masked: bool) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + (mask_bytes(raw) if masked else raw)


def _value(vtype: int, v: Any, masked: bool) -> bytes:
    if vtype == STRING:
        return _string(v, masked)
    if vtype == ARRAY:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(
            _value(etype, item, masked) for item in items)
    return struct.pack(FMT[vtype], v)


def container(entries: Iterable[Entry], tensors: Iterable[Tensor], *, masked: bool,
              trailer: str | None = None, alignment: int = 32) -> bytes:
    entries, tensors = list(entries), list(tensors)
    magic = mask_bytes(b"GGUF") if masked else b"GGUF"
    out = magic + struct.pack("<IQQ", 3, len(tensors), len(entries))
    for key, vtype, v in entries:
        out += _string(key, masked) + struct.pack("<I", vtype) + _value(vtype, v, masked)
    offset = 0
    blobs = []
    for name, shape, ggml_type, nbytes in tensors:
        out += _string(name, masked) + struct.pack("<I", len(shape))
        out += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", ggml_type, offset)
        blob = bytes((offset + i) % 251 for i in range(nbytes))
        blobs.append(blob + b"\0" * (-nbytes % alignment))
        offset += len(blobs[-1])
    out += b"\0" * (-len(out) % alignment)
    out += b"".join(blobs)
    if trailer:
        out += f"rkllm-toolkit version: {trailer}".encode()
    return out


def tiny_vocab() -> list[str]:
    return ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
        ["he", "ll", "hello", "\u2581world"]


def gguf_entries() -> list[Entry]:
    tokens = tiny_vocab()
    return [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "tiny test llama"),
        ("general.file_type", U32, 7),  # Q8_0
        ("general.alignment", U32, 32),
        ("llama.context_length", U32, 2048),
        ("llama.embedding_length", U32, 64),
        ("llama.block_count", U32, 2),
        ("llama.attention.head_count", U32, 4),
        ("llama.attention.head_count_kv", U32, 2),
        ("llama.rope.freq_base", F32, 10000.0),
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [-float(i) for i in range(len(tokens))])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3] + [1] * (len(tokens) - 3))),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
        ("tokenizer.chat_template", STRING,
         "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"),
    ]


def gguf_tensors() -> list[Tensor]:
    return [
        ("token_embd.weight", (64, 32), 8, 64 * 32 // 32 * 34),
        ("blk.0.attn_q.weight", (64, 64), 8, 64 * 64 // 32 * 34),
        ("blk.0.attn_norm.weight", (64,), 0, 64 * 4),
        ("output_norm.weight", (64,), 0, 64 * 4),
    ]


def gguf_file() -> bytes:
    """A valid small GGUF (Llama metadata, SentencePiece vocabulary, Q8_0 and F32 tensors)."""
    return container(gguf_entries(), gguf_tensors(), masked=False)


def rkllm_entries(toolkit: str = "1.3.1") -> list[Entry]:
    """Metadata of a plausible small .rkllm model."""
    tokens = tiny_vocab()
    entries: list[Entry] = [
        ("general.architecture", STRING, "qwen2"),
        ("general.file_type", U32, 1),
        ("general.alignment", U32, 32),
        ("qwen2.block_count", U32, 2),
        ("qwen2.context_length", U32, 32768),
        ("qwen2.embedding_length", U32, 64),
        ("rkllm.platform", U32, 0),
        ("rkllm.version", STRING, toolkit),
        ("rkllm.max_context", U32, 4096),
        ("rkllm.has_tokenizer", BOOL, True),
        ("tokenizer.chat_template", STRING, "{% for m in messages %}{{ m.content }}{% endfor %}"),
        ("rkllm.chat_template.system", STRING, "<|im_start|>system\nYou help.<|im_end|>\n"),
        ("rkllm.chat_template.pre", STRING, "<|im_start|>user\n"),
        ("rkllm.chat_template.post", STRING, "<|im_end|>\n<|im_start|>assistant\n"),
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [-float(i) for i in range(len(tokens))])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3] + [1] * (len(tokens) - 3))),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.bos_token_id", U32, 1),
    ]
    return entries


def rkllm_tensors() -> list[Tensor]:
    return [("token_embd.weight", (64, 32), 1, 64 * 32 * 2),
            ("output_norm.weight", (64,), 0, 64 * 4)]


def rkllm_file(toolkit: str = "1.3.1") -> bytes:
    """A valid small .rkllm (masked strings, tokenizer, tensor directory, trailer)."""
    return container(rkllm_entries(toolkit), rkllm_tensors(), masked=True, trailer=toolkit)
