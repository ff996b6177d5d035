"""The .rkllm metadata reader, on files written with the documented layout."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from rkllm_core.engine import ChatTemplateParts
from rkllm_core.errors import ModelFormatError, ModelNotFoundError
from rkllm_core.formats.rkllm import RKLLM_MAGIC, mask, read_metadata
from rkllm_core.npu.tokenizer import from_metadata

from . import rkllm_writer as w

EVERY_TYPE: list[w.Entry] = [
    ("t.u8", w.U8, 250),
    ("t.i8", w.I8, -120),
    ("t.u16", w.U16, 65000),
    ("t.i16", w.I16, -32000),
    ("t.u32", w.U32, 4_000_000_000),
    ("t.i32", w.I32, -2_000_000_000),
    ("t.f32", w.F32, 1.5),
    ("t.bool", w.BOOL, True),
    ("t.string", w.STRING, "héllo wörld 你好 🎉"),
    ("t.u64", w.U64, 2**63 + 5),
    ("t.i64", w.I64, -(2**62)),
    ("t.f64", w.F64, math.pi),
    ("t.long_string", w.STRING, "x" * 300 + "é" * 200),  # longer than the 256-byte key
    ("t.empty_string", w.STRING, ""),
    ("t.arr_i32", w.ARRAY, (w.I32, [1, -2, 3])),
    ("t.arr_f32", w.ARRAY, (w.F32, [0.5, -0.25])),
    ("t.arr_str", w.ARRAY, (w.STRING, ["a", "", "ünï", "z" * 260])),
    ("t.arr_empty", w.ARRAY, (w.U8, [])),
]


def test_mask_is_documented_key_and_magic() -> None:
    assert RKLLM_MAGIC == bytes.fromhex("daeeb336")
    assert mask(b"GGUF") == RKLLM_MAGIC
    data = bytes(range(256)) * 3
    assert mask(data) == w.masked(data)
    assert mask(mask(data)) == data


def test_every_value_type_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "all.rkllm"
    raw = w.container(EVERY_TYPE, tensor_count=7, trailer="1.3.1")
    path.write_bytes(raw)
    # The strings are masked in the file: the plain text must not appear.
    assert b"t.string" not in raw and "héllo".encode() not in raw
    meta = read_metadata(path)
    assert meta.gguf_version == 3
    assert meta.tensor_count == 7
    assert meta.trailer_version == "1.3.1"
    assert meta.toolkit_version == "1.3.1"  # from the trailer: no rkllm.version key
    for key, vtype, value in EVERY_TYPE:
        got = meta.get(key)
        if vtype == w.ARRAY:
            value = list(value[1])
        if vtype == w.F32:
            assert got == pytest.approx(value)
        else:
            assert got == value, key
    assert set(meta.values) == {k for k, _, _ in EVERY_TYPE}


def test_model_keys_and_properties(tmp_path: Path) -> None:
    path = w.write_model(tmp_path / "m.rkllm", toolkit="1.2.1", max_context=2048, hidden=8)
    meta = read_metadata(path)
    assert meta.architecture == "qwen2"
    assert meta.toolkit_version == "1.2.1"
    assert meta.platform == "RK3588"
    assert meta.max_context == 2048
    assert meta.hidden_size == 8
    assert meta.num_layers == 2
    assert meta.context_length == 32768
    tokens, merges, _ = w.byte_level_vocab()
    assert meta.tokens == tokens
    assert meta.vocab_size == len(tokens)
    assert meta.get("tokenizer.ggml.merges") == merges
    assert meta.template_parts == ChatTemplateParts(
        "<|im_start|>system\nYou help.<|im_end|>\n", "<|im_start|>user\n",
        "<|im_end|>\n<|im_start|>assistant\n",
    )
    assert meta.token_text("tokenizer.ggml.eos_token_id") == "<|im_end|>"
    assert meta.missing() == []


def test_missing_keys_are_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "bare.rkllm"
    path.write_bytes(w.container([("general.architecture", w.STRING, "llama")]))
    meta = read_metadata(path)
    assert meta.max_context is None and meta.platform is None and meta.toolkit_version is None
    assert "rkllm.version" in meta.missing() and "tokenizer.ggml.tokens" in meta.missing()
    assert from_metadata(meta) is None


def test_truncated_files_are_refused_everywhere(tmp_path: Path) -> None:
    raw = w.container(EVERY_TYPE)
    header_and_metadata = 24 + sum(
        len(w.string(k)) + 4 + len(w.value(t, v)) for k, t, v in EVERY_TYPE
    )
    path = tmp_path / "cut.rkllm"
    # Every cut inside the metadata must be refused with a typed error, never IndexError.
    cuts = sorted(set(range(0, header_and_metadata, 7)) | {header_and_metadata - 1})
    for cut in cuts:
        path.write_bytes(raw[:cut])
        with pytest.raises(ModelFormatError):
            read_metadata(path)


def test_truncation_message_names_offset(tmp_path: Path) -> None:
    raw = w.container(EVERY_TYPE)
    path = tmp_path / "cut.rkllm"
    path.write_bytes(raw[:600])  # long enough for the entry count to be plausible
    with pytest.raises(ModelFormatError, match=r"truncated .* offset \d+ while reading"):
        read_metadata(path)


def test_foreign_files(tmp_path: Path) -> None:
    gguf = tmp_path / "plain.rkllm"
    gguf.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + b"\0" * 16)
    with pytest.raises(ModelFormatError, match="plain GGUF"):
        read_metadata(gguf)
    other = tmp_path / "zip.rkllm"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFormatError, match=r"not an \.rkllm file"):
        read_metadata(other)
    tiny = tmp_path / "tiny.rkllm"
    tiny.write_bytes(b"\xda\xee")
    with pytest.raises(ModelFormatError, match="too short"):
        read_metadata(tiny)
    v2 = tmp_path / "v2.rkllm"
    v2.write_bytes(w.container([], version=2))
    with pytest.raises(ModelFormatError, match="version 2"):
        read_metadata(v2)
    with pytest.raises(ModelNotFoundError):
        read_metadata(tmp_path / "absent.rkllm")
    with pytest.raises(ModelFormatError, match="directory"):
        read_metadata(tmp_path)


def test_corrupt_counts_and_types(tmp_path: Path) -> None:
    path = tmp_path / "bad.rkllm"
    path.write_bytes(w.masked(b"GGUF") + struct.pack("<IQQ", 3, 0, 2**40))
    with pytest.raises(ModelFormatError, match="claims"):
        read_metadata(path)
    body = w.string("k") + struct.pack("<I", 42)
    path.write_bytes(w.masked(b"GGUF") + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 16)
    with pytest.raises(ModelFormatError, match="unknown GGUF value type 42"):
        read_metadata(path)
    huge = struct.pack("<Q", 2**40)
    path.write_bytes(w.masked(b"GGUF") + struct.pack("<IQQ", 3, 0, 1) + huge + b"\0" * 16)
    with pytest.raises(ModelFormatError):
        read_metadata(path)


def test_tokenizer_from_metadata(tmp_path: Path) -> None:
    meta = read_metadata(w.write_model(tmp_path / "m.rkllm"))
    tok = from_metadata(meta)
    assert tok is not None
    tokens = meta.tokens
    assert tokens is not None
    # Merges apply: "hello" is one token, " wo" merges, special tokens are never split.
    assert tok.encode("hello") == [tokens.index("hello")]
    assert tok.encode(" wo") == [tokens.index("\u0120wo")]
    assert tok.encode("<|im_start|>hello") == [tokens.index("<|im_start|>"),
                                               tokens.index("hello")]
    for text in ("héllo wörld 你好 🎉", "a\nb\tc", "12345"):
        assert tok.decode(tok.encode(text)) == text


def test_sentencepiece_tokenizer_from_metadata(tmp_path: Path) -> None:
    pieces = ["<unk>", "<s>", "</s>", "\u2581hello", "\u2581world", "\u2581", "h", "e", "l",
              "o", "w", "r", "d"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0, 0.0, 0.0, -1.0, -1.5, -3.0] + [-5.0] * 7 + [-10.0] * 256
    types = [2, 3, 3] + [1] * 10 + [6] * 256
    path = tmp_path / "spm.rkllm"
    path.write_bytes(w.container([
        ("general.architecture", w.STRING, "llama"),
        ("tokenizer.ggml.model", w.STRING, "llama"),
        ("tokenizer.ggml.tokens", w.ARRAY, (w.STRING, pieces)),
        ("tokenizer.ggml.scores", w.ARRAY, (w.F32, scores)),
        ("tokenizer.ggml.token_type", w.ARRAY, (w.I32, types)),
        ("tokenizer.ggml.bos_token_id", w.U32, 1),
        ("tokenizer.ggml.add_bos_token", w.BOOL, True),
    ]))
    tok = from_metadata(read_metadata(path))
    assert tok is not None
    assert tok.encode("hello world") == [3, 4]
    assert tok.encode("hello world", add_special_tokens=True) == [1, 3, 4]
    assert tok.decode([3, 4]) == "hello world"
    ids = tok.encode("hé")  # "é" is not in the vocabulary: byte fallback
    assert tok.decode(ids) == "hé" and 13 + 0xC3 in ids
