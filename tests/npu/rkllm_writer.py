"""Test helper: write ``.rkllm`` metadata containers with the documented layout.

Written independently of ``rkllm_core.formats.rkllm`` (it takes only the public key constant),
so the reader is tested against the documented format rather than against itself.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

KEY = bytes.fromhex(
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

Entry = tuple[str, int, Any]


def masked(data: bytes) -> bytes:
    """Byte i XOR key[i % 256]."""
    return bytes(b ^ KEY[i % 256] for i, b in enumerate(data))


def string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + masked(raw)


def value(vtype: int, v: Any) -> bytes:
    if vtype == STRING:
        return string(v)
    if vtype == ARRAY:
        etype, items = v
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(value(etype, item) for item in items)
    return struct.pack(FMT[vtype], v)


def tensor_directory(count: int) -> bytes:
    """``count`` directory entries (masked name, dims, type F16, offset) for small tensors."""
    out = b""
    for i in range(count):
        out += string(f"blk.{i}.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 4, 2)
        out += struct.pack("<IQ", 1, 16 * i)
    return out


def container(entries: Iterable[Entry], *, tensor_count: int = 0, trailer: str | None = None,
              magic: bytes | None = None, version: int = 3) -> bytes:
    entries = list(entries)
    head = (magic if magic is not None else masked(b"GGUF")) + struct.pack(
        "<IQQ", version, tensor_count, len(entries))
    body = b"".join(string(k) + struct.pack("<I", t) + value(t, v) for k, t, v in entries)
    data = head + body + tensor_directory(tensor_count)
    data += b"\0" * (-len(data) % 32) + b"RLLM" + b"\0" * 60  # stand-in for the data section
    if trailer:
        data += f"rkllm-toolkit version: {trailer}".encode()
    return data


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """A tiny GPT-2 style vocabulary: 256 byte symbols, a few merges, two control tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tokens = [chr(c) for c in cs]
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w", "\u0120w o"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [1] * len(tokens)
    for special in ("<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        types.append(3)
    return tokens, merges, types


def model_entries(*, toolkit: str = "1.1.0", max_context: int = 8192, arch: str = "qwen2",
                  hidden: int = 4, with_tokenizer: bool = True,
                  extra: Iterable[Entry] = ()) -> list[Entry]:
    """Metadata of a plausible small model (all the keys the engine and checks read)."""
    entries: list[Entry] = [
        ("general.architecture", STRING, arch),
        ("general.file_type", U32, 1),
        ("general.alignment", U32, 32),
        (f"{arch}.block_count", U32, 2),
        (f"{arch}.context_length", U32, 32768),
        (f"{arch}.embedding_length", U32, hidden),
        ("rkllm.platform", U32, 0),
        ("rkllm.version", STRING, toolkit),
        ("rkllm.max_context", U32, max_context),
        ("rkllm.has_tokenizer", BOOL, True),
        ("tokenizer.chat_template", STRING, "{% for m in messages %}{{ m.content }}{% endfor %}"),
        ("rkllm.chat_template.system", STRING, "<|im_start|>system\nYou help.<|im_end|>\n"),
        ("rkllm.chat_template.pre", STRING, "<|im_start|>user\n"),
        ("rkllm.chat_template.post", STRING, "<|im_end|>\n<|im_start|>assistant\n"),
    ]
    if with_tokenizer:
        tokens, merges, types = byte_level_vocab()
        entries += [
            ("tokenizer.ggml.model", STRING, "gpt2"),
            ("tokenizer.ggml.pre", STRING, "qwen2"),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
            ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
            ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
            ("tokenizer.ggml.eos_token_id", U32, len(tokens) - 1),
            ("tokenizer.ggml.bos_token_id", U32, len(tokens) - 2),
        ]
    extra = list(extra)
    overridden = {key for key, _, _ in extra}  # a key appears once in a valid file
    return [e for e in entries if e[0] not in overridden] + extra


def write_model(path: Path, **kwargs: Any) -> Path:
    """Write a metadata-only ``.rkllm`` file (the fake runtime never reads weights)."""
    trailer = kwargs.pop("trailer", None)
    path.write_bytes(container(model_entries(**kwargs), trailer=trailer))
    return path
