"""Find ``librkllmrt.so``, tell which ABI family it speaks, and load it through cffi.

No runtime function returns its version, so the family comes from the
``RKLLM SDK (version: …)`` text inside the library file, cross-checked against the functions
the file exports (read from its ELF dynamic symbol table, without loading it). A user can
always state the family (``family=`` or ``RKLLM_RUNTIME_FAMILY``); anything unknown or
contradictory is refused with a message that says what was found and how to override.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cffi

from ..errors import EngineUnavailableError, RuntimeLibraryError, RuntimeVersionError
from .abi import FAMILIES, SPECS, FamilySpec, ffi_for, spec_of_layout

log = logging.getLogger(__name__)

LIBRARY_NAME = "librkllmrt.so"
ENV_LIBRARY = "RKLLM_LIBRARY"
ENV_FAMILY = "RKLLM_RUNTIME_FAMILY"

# Where Rockchip's install instructions and board images put the runtime.
SYSTEM_DIRS: tuple[str, ...] = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/lib/aarch64-linux-gnu",
    "/lib",
    "/lib64",
    "/vendor/lib64",
    "/system/lib64",
    "/data/local/tmp",
)

_SDK_TEXT = re.compile(rb"RKLLM SDK \(version: ([0-9A-Za-z.\-_]+)")


def family_of_version(version: str) -> str | None:
    """The ABI family of a runtime release (``"1.2.1b1"`` -> ``"1.2.0"``); None if unknown.

    Also accepts a family name itself, so a forced value may be either.
    """
    v = version.strip().lower().lstrip("v")
    if v in FAMILIES:
        return v
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)([a-z]+\d*)?", v)
    if not m:
        return None
    major, minor, patch, suffix = int(m[1]), int(m[2]), int(m[3]), m[4] or ""
    if (major, minor) == (1, 1) and patch <= 4:
        return "1.1"
    if (major, minor) == (1, 2):
        if patch == 0 or (patch == 1 and suffix.startswith("b")):
            return "1.2.0"
        if patch <= 3:
            return "1.2.1"
    if (major, minor) == (1, 3) and patch <= 1:
        return "1.3"
    return None


def layout_of_version(version: str) -> str | None:
    """The struct layout of a release: its family's, except for 1.2.1 betas (``1.2.1b1``),
    whose multimodal input already has 1.2.1's fields. None if the release is unknown."""
    family = family_of_version(version)
    v = version.strip().lower().lstrip("v")
    if family == "1.2.0" and re.fullmatch(r"1\.2\.1b\d*", v):
        return "1.2.1b1"
    return family


def family_of_symbols(symbols: frozenset[str]) -> str:
    """What the exported functions say: ``"1.1"``, ``"1.2.0"`` or ``"1.2.1+"`` (1.2.1 or 1.3,
    which export the same names)."""
    if "rkllm_get_kv_cache_size" in symbols or "rkllm_set_function_tools" in symbols:
        return "1.2.1+"
    if "rkllm_set_chat_template" in symbols:
        return "1.2.0"
    return "1.1"


def _symbols_agree(family: str, by_symbols: str) -> bool:
    return by_symbols == ("1.2.1+" if family in ("1.2.1", "1.3") else family)


@dataclass(frozen=True, slots=True)
class LibraryIdentity:
    """What is known about one runtime library file."""

    path: Path
    sdk_version: str | None
    family: str
    symbols: frozenset[str]
    family_by_symbols: str
    forced: bool
    reason: str
    internal_version: str | None = None
    warnings: tuple[str, ...] = field(default=())
    layout: str = ""  # the struct layout: the family's, or a release's own ("1.2.1b1")

    def __post_init__(self) -> None:
        if not self.layout:
            object.__setattr__(self, "layout", self.family)

    @property
    def spec(self) -> FamilySpec:
        """The feature table of the ABI family (and layout) in use."""
        return spec_of_layout(self.layout)


# --- finding the file ----------------------------------------------------------------------


def candidate_paths(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every place searched, in order: explicit path, $RKLLM_LIBRARY, $LD_LIBRARY_PATH, system."""
    out: list[Path] = []
    if explicit:
        out.append(Path(explicit))
    env = os.environ.get(ENV_LIBRARY)
    if env:
        out.append(Path(env))
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if d:
            out.append(Path(d) / LIBRARY_NAME)
    out.extend(Path(d) / LIBRARY_NAME for d in SYSTEM_DIRS)
    return out


def find_library(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The runtime library to load, or :class:`EngineUnavailableError` naming every place tried.

    An explicit path (argument or ``$RKLLM_LIBRARY``) that does not exist is an error of its
    own: silently falling back to another copy would load a library the user did not ask for.
    """
    for label, value in (("library=", explicit), (f"${ENV_LIBRARY}", os.environ.get(ENV_LIBRARY))):
        if value:
            p = Path(value)
            if p.is_dir():
                p = p / LIBRARY_NAME
            if not p.is_file():
                raise EngineUnavailableError(
                    f"{label} names {str(value)!r}, which is not a file; point it at"
                    f" {LIBRARY_NAME} (from Rockchip's rknn-llm release, rkllm-runtime/Linux/"
                    f"librkllm_api/aarch64/)"
                )
            return p
    searched = candidate_paths(None)
    for p in searched:
        if p.is_file():
            return p
    places = "\n  ".join(str(p) for p in searched)
    raise EngineUnavailableError(
        f"the RKLLM runtime ({LIBRARY_NAME}) was not found; searched:\n  {places}\n"
        f"On an RK3588/RK3576 board, copy it from Rockchip's rknn-llm release to /usr/lib or set"
        f" ${ENV_LIBRARY}=/path/to/{LIBRARY_NAME}. On a PC there is no NPU: use the PC engine"
        f" (engine='pc') with a Hugging Face or GGUF model."
    )


# --- reading the file --------------------------------------------------------------------


def read_version_text(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """``(sdk_version, internal_version)`` read from the file's bytes (None where absent)."""
    with open(path, "rb") as fh:
        try:
            data: bytes | mmap.mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return None, None
        try:
            m = _SDK_TEXT.search(data)
            sdk = m.group(1).decode("ascii") if m else None
            m2 = re.search(rb"rknn llm lib version: ([0-9A-Za-z.\-_]+)", data)
            internal = m2.group(1).decode("ascii") if m2 else None
        finally:
            data.close()
    return sdk, internal


def exported_symbols(path: str | os.PathLike[str]) -> frozenset[str]:
    """Names of the functions defined and exported by an ELF shared library (its .dynsym).

    Read from the file rather than with dlsym so that ``rkllm doctor`` can inspect a library
    without loading it (loading runs Rockchip's constructors and may fail on a wrong board).
    """
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF":
        raise RuntimeLibraryError(f"{path} is not an ELF shared library")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    try:
        if is64:
            shoff, = struct.unpack_from(end + "Q", data, 0x28)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        else:
            shoff, = struct.unpack_from(end + "I", data, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        sections = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if is64:
                fields = struct.unpack_from(end + "IIQQQQIIQQ", data, off)
            else:
                fields = struct.unpack_from(end + "IIIIIIIIII", data, off)
            _, sh_type, _, _, sh_offset, sh_size, sh_link, _, _, sh_entsize = fields
            sections.append((sh_type, sh_offset, sh_size, sh_link, sh_entsize))
        names: set[str] = set()
        for sh_type, sh_offset, sh_size, sh_link, sh_entsize in sections:
            if sh_type != 11:  # SHT_DYNSYM
                continue
            str_off = sections[sh_link][1]
            entsize = sh_entsize or (24 if is64 else 16)
            for j in range(sh_size // entsize):
                off = sh_offset + j * entsize
                if is64:
                    st_name, st_info, _, st_shndx = struct.unpack_from(end + "IBBH", data, off)
                else:
                    st_name, _, _, st_info, _, st_shndx = struct.unpack_from(
                        end + "IIIBBH", data, off
                    )
                if st_shndx == 0 or (st_info >> 4) == 0:  # undefined, or a local symbol
                    continue
                stop = data.index(b"\0", str_off + st_name)
                names.add(data[str_off + st_name : stop].decode("ascii", "replace"))
    except (struct.error, IndexError, ValueError) as exc:
        raise RuntimeLibraryError(f"{path}: cannot read its ELF symbol table ({exc})") from exc
    return frozenset(names)


def identify(
    path: str | os.PathLike[str], family: str | None = None
) -> LibraryIdentity:
    """Decide the ABI family of the library at ``path``.

    ``family`` (or ``$RKLLM_RUNTIME_FAMILY``) forces it — a family name (``"1.2.1"``) or a
    release (``"1.2.2"``). Without it, the version text decides and the exported functions must
    agree; otherwise :class:`RuntimeVersionError` says what was found and how to override.
    """
    path = Path(path)
    sdk, internal = read_version_text(path)
    symbols = frozenset(s for s in exported_symbols(path) if s.startswith("rkllm_"))
    by_symbols = family_of_symbols(symbols)
    by_text = family_of_version(sdk) if sdk else None
    forced_value = family or os.environ.get(ENV_FAMILY)
    override = (
        f"set {ENV_FAMILY}=<family> (or pass family=...) with one of {', '.join(FAMILIES)}"
    )
    warnings: list[str] = []

    if forced_value:
        source = "family=" if family else f"${ENV_FAMILY}"
        forced = family_of_version(forced_value)
        if forced is None:
            raise RuntimeVersionError(
                f"{source}{forced_value!r} is not a known RKLLM runtime family or release;"
                f" known families: {', '.join(FAMILIES)}"
            )
        if not _symbols_agree(forced, by_symbols):
            # A forced family whose functions the library lacks would crash on first use.
            raise RuntimeVersionError(
                f"{source}{forced_value!r} selects family {forced}, but {path} exports the"
                f" functions of family {by_symbols} (found: {', '.join(sorted(symbols))});"
                f" the declarations of {forced} cannot be used with this library"
            )
        if by_text and by_text != forced:
            warnings.append(
                f"{path} says 'RKLLM SDK (version: {sdk})' (family {by_text}) but family"
                f" {forced} was forced by {source}"
            )
            log.warning("%s", warnings[-1])
        reason = f"forced by {source}{forced_value!r}"
        # A forced release has its own layout; a forced family name keeps the layout of the
        # release the file names, when that release belongs to the forced family.
        layout = layout_of_version(forced_value) or forced
        if forced_value.strip().lower() in FAMILIES and by_text == forced and sdk:
            layout = layout_of_version(sdk) or forced
        return LibraryIdentity(
            path, sdk, forced, symbols, by_symbols, True, reason, internal, tuple(warnings),
            layout,
        )

    if sdk is None:
        raise RuntimeVersionError(
            f"{path} carries no 'RKLLM SDK (version: ...)' text, so its ABI family cannot be"
            f" told; its exported functions suggest family {by_symbols}. If you know the"
            f" release, {override}"
        )
    if by_text is None:
        raise RuntimeVersionError(
            f"{path} is RKLLM runtime {sdk}, a release this binding does not know (known:"
            f" 1.1.0-1.1.4, 1.2.0-1.2.3, 1.3.0-1.3.1; its functions look like family"
            f" {by_symbols}). Its struct layouts may have changed; to try anyway, {override}"
        )
    if not _symbols_agree(by_text, by_symbols):
        raise RuntimeVersionError(
            f"{path} says 'RKLLM SDK (version: {sdk})' (family {by_text}) but exports the"
            f" functions of family {by_symbols} (found: {', '.join(sorted(symbols))}); the"
            f" file may be patched or mislabelled. If you are sure, {override}"
        )
    missing = SPECS[by_text].symbols - symbols
    if missing:
        raise RuntimeVersionError(
            f"{path} (RKLLM runtime {sdk}, family {by_text}) lacks {', '.join(sorted(missing))};"
            f" it is not a complete librkllmrt.so"
        )
    layout = layout_of_version(sdk) or by_text
    reason = (
        f"'RKLLM SDK (version: {sdk})' in the file; exported functions agree ({by_symbols})"
        + (f"; structs of release {layout}" if layout != by_text else "")
    )
    return LibraryIdentity(path, sdk, by_text, symbols, by_symbols, False, reason, internal,
                           layout=layout)


@dataclass(slots=True)
class RuntimeLibrary:
    """A loaded runtime: its identity, the family's FFI and the dlopen'ed library."""

    identity: LibraryIdentity
    ffi: cffi.FFI
    lib: object

    @property
    def family(self) -> str:
        """The ABI family in use."""
        return self.identity.family

    @property
    def spec(self) -> FamilySpec:
        """The family's feature table."""
        return self.identity.spec


def open_runtime(identity: LibraryIdentity) -> RuntimeLibrary:
    """dlopen an identified library with its family's declarations."""
    ffi = ffi_for(identity.layout)
    try:
        lib = ffi.dlopen(str(identity.path))
    except OSError as exc:
        raise RuntimeLibraryError(
            f"cannot load {identity.path} ({exc}); it must be the aarch64 build of librkllmrt.so"
            f" and its dependencies (libgomp, librknnrt on older releases) must be installed"
        ) from exc
    log.info("loaded %s: RKLLM runtime %s, ABI family %s, layout %s (%s)", identity.path,
             identity.sdk_version, identity.family, identity.layout, identity.reason)
    return RuntimeLibrary(identity, ffi, lib)


def load_runtime(
    library: str | os.PathLike[str] | None = None, family: str | None = None
) -> RuntimeLibrary:
    """Find, identify and dlopen the runtime; every failure is a typed error with the fix."""
    return open_runtime(identify(find_library(library), family))
