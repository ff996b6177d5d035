"""Finding the runtime and telling its ABI family from the version text and the symbols."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rkllm_core.errors import EngineUnavailableError, RuntimeLibraryError, RuntimeVersionError
from rkllm_core.npu.abi import FAMILIES, SPECS, ffi_for
from rkllm_core.npu.library import (
    LIBRARY_NAME,
    exported_symbols,
    family_of_symbols,
    family_of_version,
    find_library,
    identify,
    load_runtime,
)

from .conftest import FAMILY_BUILDS, FakeRuntime, compile_fixture


@pytest.mark.parametrize(
    ("version", "family"),
    [
        ("1.1.0", "1.1"), ("1.1.4", "1.1"), ("1.2.0", "1.2.0"), ("1.2.1b1", "1.2.0"),
        ("1.2.1", "1.2.1"), ("1.2.2", "1.2.1"), ("1.2.3", "1.2.1"), ("1.3.0", "1.3"),
        ("1.3.1", "1.3"), ("1.2.1", "1.2.1"), ("v1.2.3", "1.2.1"),
        ("1.0.1", None), ("1.2.4", None), ("1.3.2", None), ("1.4.0", None), ("2.0", None),
        ("banana", None),
    ],
)
def test_family_of_version(version: str, family: str | None) -> None:
    assert family_of_version(version) == family


def test_exported_symbols_match_family(rt: FakeRuntime) -> None:
    syms = frozenset(s for s in exported_symbols(rt.path) if s.startswith("rkllm_"))
    assert syms == SPECS[rt.family].symbols
    expected = "1.2.1+" if rt.family in ("1.2.1", "1.3") else rt.family
    assert family_of_symbols(syms) == expected
    # test-fixture getters are exported too, but never mistaken for runtime functions
    assert "fake_rkllm_record" in exported_symbols(rt.path)


def test_identify_each_family(rt: FakeRuntime) -> None:
    ident = identify(rt.path)
    assert ident.family == rt.family
    assert ident.sdk_version == FAMILY_BUILDS[rt.family][1]
    assert ident.internal_version == "9.9.9"  # the decoy text is kept apart
    assert not ident.forced
    assert FAMILY_BUILDS[rt.family][1] in ident.reason


def test_layout_matches_the_c_compiler(rt: FakeRuntime) -> None:
    """Our declarations against the fixture's, which the C compiler lays out."""
    ffi = ffi_for(rt.family)
    checks = {
        "sizeof RKLLMParam": ffi.sizeof("RKLLMParam"),
        "sizeof RKLLMExtendParam": ffi.sizeof("RKLLMExtendParam"),
        "sizeof RKLLMInferParam": ffi.sizeof("RKLLMInferParam"),
        "sizeof RKLLMResult": ffi.sizeof("RKLLMResult"),
        "sizeof RKLLMLoraAdapter": ffi.sizeof("RKLLMLoraAdapter"),
        "sizeof RKLLMPromptCacheParam": ffi.sizeof("RKLLMPromptCacheParam"),
        "offsetof RKLLMParam.extend_param": ffi.offsetof("RKLLMParam", "extend_param"),
        "offsetof RKLLMParam.is_async": ffi.offsetof("RKLLMParam", "is_async"),
        "offsetof RKLLMParam.top_p": ffi.offsetof("RKLLMParam", "top_p"),
        "offsetof RKLLMInput.input_type": ffi.offsetof("RKLLMInput", "input_type"),
        "offsetof RKLLMInput.prompt_input": ffi.offsetof("RKLLMInput", "prompt_input"),
        "offsetof RKLLMInferParam.prompt_cache_params":
            ffi.offsetof("RKLLMInferParam", "prompt_cache_params"),
        "offsetof RKLLMResult.last_hidden_layer": ffi.offsetof("RKLLMResult", "last_hidden_layer"),
    }
    spec = SPECS[rt.family]
    if spec.name != "1.1":
        checks["offsetof RKLLMInferParam.keep_history"] = ffi.offsetof("RKLLMInferParam",
                                                                       "keep_history")
        checks["offsetof RKLLMResult.logits"] = ffi.offsetof("RKLLMResult", "logits")
    if spec.perf:
        checks["offsetof RKLLMResult.perf"] = ffi.offsetof("RKLLMResult", "perf")
        checks["offsetof RKLLMExtendParam.n_batch"] = ffi.offsetof("RKLLMExtendParam", "n_batch")
        checks["sizeof RKLLMCrossAttnParam"] = ffi.sizeof("RKLLMCrossAttnParam")
    if spec.sampling_per_run:
        checks["sizeof RKLLMSamplingParam"] = ffi.sizeof("RKLLMSamplingParam")
        checks["sizeof RKLLMCallback"] = ffi.sizeof("RKLLMCallback")
        checks["offsetof RKLLMInferParam.max_new_tokens"] = ffi.offsetof("RKLLMInferParam",
                                                                         "max_new_tokens")
        checks["offsetof RKLLMInput.multimodal_input.video"] = (
            ffi.offsetof("RKLLMInput", "multimodal_input") + ffi.offsetof(
                "RKLLMMultiModelInput", "video"))
        # our RKLLMInput carries a zeroed 128-byte tail for 1.3.1's audio block
        assert ffi.sizeof("RKLLMInput") == rt.layout("sizeof RKLLMInput") + 128
    else:
        checks["sizeof RKLLMInput"] = ffi.sizeof("RKLLMInput")
    for what, ours in checks.items():
        theirs = rt.layout(what)
        assert theirs != -1, f"fixture does not know {what}"
        assert ours == theirs, f"family {rt.family}: {what} is {ours} here, {theirs} in C"


def test_every_family_declares(tmp_path: Path) -> None:
    for fam in FAMILIES:
        ffi = ffi_for(fam)
        assert ffi.sizeof("RKLLMParam") > 0


def test_mismatch_between_text_and_symbols_is_refused() -> None:
    lib = compile_fixture("FAMILY_1_1", "1.3.0", "_mismatch")
    with pytest.raises(RuntimeVersionError) as exc:
        identify(lib)
    msg = str(exc.value)
    assert "1.3.0" in msg and "family 1.1" in msg and "RKLLM_RUNTIME_FAMILY" in msg


def test_missing_version_text_is_refused_with_hint() -> None:
    lib = compile_fixture("FAMILY_1_2_1", None, "_notext")
    with pytest.raises(RuntimeVersionError, match=r"no 'RKLLM SDK .*suggest family 1\.2\.1\+"):
        identify(lib)
    ident = identify(lib, family="1.2.2")  # a release is accepted as well as a family name
    assert ident.family == "1.2.1" and ident.forced and ident.sdk_version is None


def test_unknown_version_refused_then_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = compile_fixture("FAMILY_1_3", "1.4.0", "_future")
    with pytest.raises(RuntimeVersionError, match=r"1\.4\.0, a release this binding does not know"):
        identify(lib)
    monkeypatch.setenv("RKLLM_RUNTIME_FAMILY", "1.3")
    ident = identify(lib)
    assert ident.family == "1.3" and ident.forced and "RKLLM_RUNTIME_FAMILY" in ident.reason


def test_forcing_a_family_the_symbols_contradict_is_refused() -> None:
    lib = compile_fixture(*FAMILY_BUILDS["1.1"])
    with pytest.raises(RuntimeVersionError, match=r"exports the functions of family 1\.1"):
        identify(lib, family="1.3")
    with pytest.raises(RuntimeVersionError, match="not a known"):
        identify(lib, family="9.9")


def test_forced_family_warns_when_text_disagrees() -> None:
    lib = compile_fixture(*FAMILY_BUILDS["1.3"])
    ident = identify(lib, family="1.2.1")  # 1.2.1 and 1.3 export the same names
    assert ident.family == "1.2.1"
    assert ident.warnings and "1.3.1" in ident.warnings[0]


def test_find_library_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            rt: FakeRuntime) -> None:
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir()
    d2.mkdir()
    shutil.copy(rt.path, d2 / LIBRARY_NAME)
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{d1}:{d2}")
    assert find_library() == d2 / LIBRARY_NAME
    monkeypatch.setenv("RKLLM_LIBRARY", str(rt.path))
    assert find_library() == rt.path
    assert find_library(d2) == d2 / LIBRARY_NAME  # a directory holding the library
    with pytest.raises(EngineUnavailableError, match="not a file"):
        find_library(tmp_path / "nope.so")


def test_not_found_names_places_and_pc_engine(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    monkeypatch.setattr("rkllm_core.npu.library.SYSTEM_DIRS", (str(tmp_path / "sys"),))
    with pytest.raises(EngineUnavailableError) as exc:
        find_library()
    msg = str(exc.value)
    assert str(tmp_path / LIBRARY_NAME) in msg and str(tmp_path / "sys" / LIBRARY_NAME) in msg
    assert "PC engine" in msg


def test_load_runtime_and_non_elf(tmp_path: Path, rt: FakeRuntime) -> None:
    loaded = load_runtime(rt.path)
    assert loaded.family == rt.family
    assert loaded.lib.rkllm_createDefaultParam().max_context_len == 111
    bogus = tmp_path / LIBRARY_NAME
    bogus.write_bytes(b"RKLLM SDK (version: 1.2.2 | target: Linux)")
    with pytest.raises(RuntimeLibraryError, match="not an ELF"):
        identify(bogus)
