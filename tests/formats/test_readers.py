"""The bounded GGUF / .rkllm readers: values, tensors, and a typed error for every defect."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from rkllm_core.errors import ModelFormatError, ModelNotFoundError
from rkllm_core.formats.gguf import FILE_TYPES, GGML_TYPES, check_gguf, read_gguf
from rkllm_core.formats.rkllm import read_metadata
from rkllm_core.model_info import describe_model

from . import writers as w

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_gguf_values_and_tensors(tmp_path: Path) -> None:
    f = read_gguf(_write(tmp_path, "m.gguf", w.gguf_file()))
    assert f.architecture == "llama" and f.version == 3
    assert f.arch_integer("context_length") == 2048
    assert f.strings("tokenizer.ggml.tokens") == w.tiny_vocab()
    assert f.get("tokenizer.ggml.token_type")[:4] == [2, 3, 3, 1]
    assert f.number("llama.rope.freq_base") == 10000.0
    assert f.boolean("tokenizer.ggml.add_bos_token") is True
    assert [t.name for t in f.tensors] == [t[0] for t in w.gguf_tensors()]
    assert [t.nbytes for t in f.tensors] == [t[3] for t in w.gguf_tensors()]
    assert f.file_type() == "Q8_0" and f.dominant_tensor_type(min_dims=2) == "Q8_0"
    f.check_complete()


def test_type_tables_match_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    for code, (name, block, size) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType(code)
        assert qtype.name == name and gguf.GGML_QUANT_SIZES[qtype] == (block, size)
    for code, name in FILE_TYPES.items():
        assert gguf.LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_") == name


def test_reader_agrees_with_the_gguf_package_on_its_own_file(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    out = tmp_path / "written.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(3)
    writer.add_token_list(["a", "bb", "ccc"])
    writer.add_chat_template("{{ x }}")
    writer.add_tensor("blk.0.w", np.arange(64, dtype=np.float32).reshape(2, 32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    f = check_gguf(out)
    assert f.arch_integer("block_count") == 3
    assert f.strings("tokenizer.ggml.tokens") == ["a", "bb", "ccc"]
    assert [(t.name, t.shape, t.type_name) for t in f.tensors] == [("blk.0.w", (32, 2), "F32")]


def test_huge_counts_fail_fast_and_small(tmp_path: Path) -> None:
    raw = bytearray(w.gguf_file())
    at = raw.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 4 + 4
    assert struct.unpack_from("<Q", raw, at)[0] == len(w.tiny_vocab())
    for count in (5_000_000, 2**40, 2**64 - 1):
        struct.pack_into("<Q", raw, at, count)
        path = _write(tmp_path, "huge.gguf", bytes(raw))
        tracemalloc.start()
        t0 = time.monotonic()
        with pytest.raises(ModelFormatError, match=rf"claims {count} strings at offset {at - 4}"):
            read_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.monotonic() - t0 < 1.0 and peak < 20 * len(raw)


def test_huge_string_length_and_unknown_types(tmp_path: Path) -> None:
    raw = bytearray(w.gguf_file())
    at = raw.index(b"general.architecture") - 8
    struct.pack_into("<Q", raw, at, 2**62)
    with pytest.raises(ModelFormatError, match=rf"claims {2**62} bytes at offset {at}"):
        read_gguf(_write(tmp_path, "s.gguf", bytes(raw)))
    raw = bytearray(w.gguf_file())
    at = raw.index(b"general.architecture") + len(b"general.architecture")
    struct.pack_into("<I", raw, at, 99)
    with pytest.raises(ModelFormatError, match=r"unknown GGUF value type 99 .*general\.arch"):
        read_gguf(_write(tmp_path, "t.gguf", bytes(raw)))


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    entries = [*w.gguf_entries(), ("llama.block_count", w.U32, 9)]
    path = _write(tmp_path, "dup.gguf", w.container(entries, w.gguf_tensors(), masked=False))
    with pytest.raises(ModelFormatError, match=r"'llama.block_count' appears twice"):
        read_gguf(path)
    rk = [("general.architecture", w.STRING, "x"), ("general.architecture", w.STRING, "y")]
    path = _write(tmp_path, "dup.rkllm", w.container(rk, [], masked=True))
    with pytest.raises(ModelFormatError, match="appears twice"):
        read_metadata(path)


def test_wrong_value_types_are_typed_errors(tmp_path: Path) -> None:
    entries = [(k, w.STRING, "many") if k == "llama.block_count" else (k, t, v)
               for k, t, v in w.gguf_entries()]
    path = _write(tmp_path, "wt.gguf", w.container(entries, w.gguf_tensors(), masked=False))
    with pytest.raises(ModelFormatError, match=r"'llama\.block_count' should be an integer"):
        describe_model(path)
    rk = [("general.architecture", w.STRING, "qwen2"), ("rkllm.max_context", w.F32, 2.5),
          ("tokenizer.ggml.tokens", w.ARRAY, (w.U8, [1, 2]))]
    path = _write(tmp_path, "wt.rkllm", w.container(rk, [], masked=True))
    with pytest.raises(ModelFormatError, match=r"'rkllm\.max_context' should be an integer"):
        read_metadata(path)


def test_truncation_is_detected(tmp_path: Path) -> None:
    raw = w.gguf_file()
    for cut in (len(raw) - 1, len(raw) // 2, 100):
        path = _write(tmp_path, "cut.gguf", raw[:cut])
        with pytest.raises(ModelFormatError, match="truncated"):
            check_gguf(path)
        with pytest.raises(ModelFormatError, match="truncated"):
            describe_model(path)
    rk = w.rkllm_file("1.3.1")
    assert read_metadata(_write(tmp_path, "ok.rkllm", rk)).trailer_version == "1.3.1"
    for cut in (len(rk) - 5, len(rk) // 2, 200):
        with pytest.raises(ModelFormatError, match="truncated"):
            read_metadata(_write(tmp_path, "cut.rkllm", rk[:cut]))


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    text = _write(tmp_path, "notes.gguf", b"just some text, renamed\n" * 10)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        check_gguf(text)
    with pytest.raises(ModelFormatError, match="NPU"):
        read_gguf(_write(tmp_path, "npu.gguf", w.rkllm_file()))
    with pytest.raises(ModelNotFoundError):
        read_gguf(tmp_path / "absent.gguf")


def test_rkllm_info_prints_one_line_for_a_corrupt_file(tmp_path: Path) -> None:
    raw = bytearray(w.gguf_file())
    at = raw.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 8
    struct.pack_into("<Q", raw, at, 5_000_000)
    bad = _write(tmp_path, "bad.gguf", bytes(raw))
    proc = subprocess.run([sys.executable, "-m", "rkllm_core.cli", "info", str(bad)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr and "offset" in proc.stderr


def test_bad_gguf_at_load_is_a_typed_error(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from rkllm_core.pc.loading import load_pretrained

    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_pretrained(_write(tmp_path, "text.gguf", b"hello\n" * 100))
    with pytest.raises(ModelFormatError, match="truncated"):
        load_pretrained(_write(tmp_path, "half.gguf", w.gguf_file()[:1500]))


def test_relative_path_that_does_not_exist_is_not_a_hub_id(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from rkllm_core.pc.loading import _is_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert _is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    for text in ("models/tiny", "models/x.gguf", "org/model.gguf", "./org/m", "a/b/c", "~/m",
                 "/abs/x"):
        assert not _is_hub_id(text), text


def test_rkllm_chat_on_a_bad_gguf_prints_one_line(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    bad = _write(tmp_path, "renamed.gguf", b"a text file, renamed\n" * 50)
    proc = subprocess.run([sys.executable, "-m", "rkllm_core.cli", "chat", str(bad)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          input="exit\n")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not a GGUF file" in errors[0]
    assert "Traceback" not in proc.stderr


def test_pull_has_a_verify_flag() -> None:
    from rkllm_core.cli import build_parser

    args = build_parser().parse_args(["pull", "smollm2", "--verify"])
    assert args.verify and not args.force
