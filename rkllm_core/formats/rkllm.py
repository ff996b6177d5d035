"""Read a ``.rkllm`` file's metadata without the runtime (pure Python, bounded memory).

A ``.rkllm`` file is a GGUF v3 container whose strings are XOR-masked (:mod:`.gguf` reads
both kinds). Reading it lets the NPU engine refuse a model the runtime would reject with a bare
``-1`` or a crash, and gives the embedding path the model's own tokenizer. Every key is
optional (files from older toolkits differ); a key present with the wrong type is a
:class:`~rkllm_core.errors.ModelFormatError` naming it, never a TypeError.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import ChatTemplateParts
from ..errors import ModelFormatError
from .gguf import MASK_KEY, RKLLM_MAGIC, GGUFFile, GGUFValues, mask, open_container

__all__ = ["MASK_KEY", "PLATFORMS", "RKLLM_MAGIC", "RKLLMMetadata", "mask", "read_metadata"]

# Observed platform codes; anything else is reported as the raw value.
PLATFORMS = {0: "RK3588"}
# Toolkits 1.3.1+ of the 1.3 series end the file with "rkllm-toolkit version: X" (seen on
# 1.3.1 files): without it, a file of such a toolkit lost its end. Other releases are not known
# to write it, so its absence proves nothing there.
TRAILER_RELEASES = ((1, 3, 1), (1, 4, 0))  # [from, until)
_TRAILER = re.compile(rb"rkllm-toolkit version: ([0-9A-Za-z.\-_]+)")


@dataclass(slots=True)
class RKLLMMetadata(GGUFValues):
    """What a ``.rkllm`` file says about itself. ``None`` = the file does not say."""

    path: Path
    file_size: int
    gguf_version: int
    tensor_count: int
    values: dict[str, Any] = field(repr=False)
    trailer_version: str | None = None
    container: GGUFFile | None = field(default=None, repr=False)

    def _arch(self, suffix: str) -> int | None:
        arch = self.architecture
        return self.integer(f"{arch}.{suffix}") if arch else None

    @property
    def architecture(self) -> str | None:
        """``general.architecture`` (e.g. ``qwen2``, ``llama``)."""
        return self.string("general.architecture")

    @property
    def toolkit_version(self) -> str | None:
        """The rkllm-toolkit release that wrote the file (``rkllm.version`` or the trailer)."""
        v = self.string("rkllm.version")
        return v if v is not None else self.trailer_version

    @property
    def platform(self) -> str | None:
        """Target platform (``RK3588`` …); an unknown code is returned as ``code N``."""
        p = self.values.get("rkllm.platform")
        if p is None:
            return None
        if isinstance(p, str):
            return p.upper()
        code = self.integer("rkllm.platform")
        return PLATFORMS.get(code, f"code {code}") if code is not None else None

    @property
    def max_context(self) -> int | None:
        """The largest ``max_context_len`` the file was built for."""
        return self.integer("rkllm.max_context")

    @property
    def context_length(self) -> int | None:
        """The architecture's trained context length."""
        return self._arch("context_length")

    @property
    def hidden_size(self) -> int | None:
        """``<arch>.embedding_length``."""
        return self._arch("embedding_length")

    @property
    def num_layers(self) -> int | None:
        """``<arch>.block_count``."""
        return self._arch("block_count")

    @property
    def vocab_size(self) -> int | None:
        """``<arch>.vocab_size`` or the length of the token list."""
        v = self._arch("vocab_size")
        if v is not None:
            return v
        tokens = self.tokens
        return len(tokens) if tokens else None

    @property
    def tokenizer_model(self) -> str | None:
        """``tokenizer.ggml.model`` (``gpt2`` = byte-level BPE, ``llama`` = SentencePiece)."""
        return self.string("tokenizer.ggml.model")

    @property
    def tokens(self) -> list[str] | None:
        """The vocabulary, id order."""
        return self.strings("tokenizer.ggml.tokens")

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template copied from the Hugging Face tokenizer config."""
        return self.string("tokenizer.chat_template")

    @property
    def template_parts(self) -> ChatTemplateParts | None:
        """The runtime's simple template (system / prefix / postfix), if the file has one."""
        keys = ("rkllm.chat_template.system", "rkllm.chat_template.pre", "rkllm.chat_template.post")
        if not any(k in self.values for k in keys):
            return None
        system, pre, post = (self.string(k) or "" for k in keys)
        return ChatTemplateParts(system=system, prefix=pre, postfix=post)

    def token_text(self, key: str) -> str | None:
        """The token string of an id-valued key such as ``tokenizer.ggml.eos_token_id``."""
        tid = self.integer(key, minimum=None)
        tokens = self.tokens
        if tid is None or not tokens or not 0 <= tid < len(tokens):
            return None
        return tokens[tid]

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

    def validate(self) -> None:
        """Read every key the engine and checks use, so a wrong type fails here, typed."""
        _ = (self.architecture, self.toolkit_version, self.platform, self.max_context,
             self.context_length, self.hidden_size, self.num_layers, self.vocab_size,
             self.tokenizer_model, self.chat_template, self.template_parts,
             self.token_text("tokenizer.ggml.bos_token_id"),
             self.token_text("tokenizer.ggml.eos_token_id"))
        for key in ("tokenizer.ggml.merges",):
            self.strings(key)
        for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            self.numbers(key)
        self.string("tokenizer.ggml.pre")
        self.boolean("tokenizer.ggml.add_bos_token")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def read_metadata(path: str | os.PathLike[str]) -> RKLLMMetadata:
    """Parse and check the metadata of the ``.rkllm`` file at ``path``.

    Raises :class:`~rkllm_core.errors.ModelNotFoundError` (missing / unreadable) or
    :class:`~rkllm_core.errors.ModelFormatError` (not an ``.rkllm`` file, truncated, corrupt,
    a key twice or with the wrong type) with a message naming the problem.
    """
    p = Path(path)
    if p.is_dir():
        raise ModelFormatError(
            f"{p} is a directory; the NPU engine loads one .rkllm file (convert a Hugging Face"
            f" directory with the toolkit, or use the PC engine)"
        )
    c = open_container(p, "rkllm")
    if c.data_offset > c.file_size:
        raise ModelFormatError(
            f"{p} is truncated: its data section starts at offset {c.data_offset} but the file"
            f" has {c.file_size} bytes; copy or convert the model again"
        )
    with open(p, "rb") as fh:
        fh.seek(max(0, c.file_size - 256))
        tail = fh.read(256)
    m = _TRAILER.search(tail)
    trailer = m.group(1).decode("ascii") if m else None
    meta = RKLLMMetadata(p, c.file_size, c.version, c.tensor_count, c.values, trailer, c)
    meta.validate()
    stated = meta.string("rkllm.version")
    since, until = TRAILER_RELEASES
    if trailer is None and stated and since <= _version_tuple(stated) < until:
        raise ModelFormatError(
            f"{p} is truncated: rkllm-toolkit {stated} ends its files with an"
            f" 'rkllm-toolkit version' line, and this file ({c.file_size} bytes) has none;"
            f" copy or convert the model again"
        )
    return meta

