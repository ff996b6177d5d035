"""The model's tokenizer for the NPU engine, without torch or transformers.

Embeddings and 1.1-family prompts are sent to the runtime as token ids, so that the runtime's
built-in chat template cannot silently change what is embedded. The ids come from a Hugging
Face ``tokenizer.json`` the user names, or from the vocabulary stored in the ``.rkllm`` file
(``tokenizer.ggml.*``), rebuilt with the ``tokenizers`` package (which has aarch64 wheels).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotFoundError
from ..formats.rkllm import RKLLMMetadata

log = logging.getLogger(__name__)

# Pre-tokenizer splits of the byte-level BPE families, as llama.cpp names them
# (tokenizer.ggml.pre); an unknown name falls back to GPT-2's own regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# GGUF token types: 3 = control, 4 = user defined (both must never be split by the BPE).
_CONTROL, _USER_DEFINED = 3, 4


class NPUTokenizer:
    """``encode`` / ``decode`` as :class:`rkllm_core.engine.Tokenizer` describes them."""

    def __init__(self, backend: Any, source: str, bos_id: int | None = None,
                 add_bos: bool = False) -> None:
        self._tok = backend
        self.source = source
        self.bos_id = bos_id
        self.add_bos = add_bos and bos_id is not None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the model's BOS rule applies."""
        ids = list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        if add_special_tokens and self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, int(self.bos_id))  # type: ignore[arg-type]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def __repr__(self) -> str:
        return f"NPUTokenizer({self.source})"


def from_huggingface(path: str | os.PathLike[str]) -> NPUTokenizer:
    """Load ``tokenizer.json`` (a file, or a directory holding one)."""
    from tokenizers import Tokenizer

    p = Path(path).expanduser()
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise ModelNotFoundError(
            f"tokenizer={str(path)!r}: no tokenizer.json there; name a Hugging Face model"
            f" directory (with tokenizer.json) or the file itself"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ConfigError(f"{file} is not a valid tokenizer.json: {exc}") from exc
    return NPUTokenizer(tok, f"hf:{file}")


def from_metadata(meta: RKLLMMetadata) -> NPUTokenizer | None:
    """Rebuild the tokenizer stored in a ``.rkllm`` file; None if the file has none or its kind
    is not supported (logged)."""
    tokens = meta.tokens
    model = meta.tokenizer_model
    if not tokens or not model:
        log.info("%s stores no tokenizer (tokenizer.ggml.model/tokens)", meta.path.name)
        return None
    types = meta.get("tokenizer.ggml.token_type") or []
    bos = meta.get("tokenizer.ggml.bos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    try:
        if model == "gpt2":
            tok = _byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [],
                                  meta.get("tokenizer.ggml.pre"))
        elif model == "llama":
            tok = _sentencepiece(tokens, meta.get("tokenizer.ggml.scores") or [])
        else:
            log.warning("%s: tokenizer kind %r is not supported; pass tokenizer=<HF dir>",
                        meta.path.name, model)
            return None
    except Exception as exc:  # a malformed vocabulary must not stop the model from loading
        log.warning("%s: cannot rebuild its tokenizer (%s); pass tokenizer=<HF dir>",
                    meta.path.name, exc)
        return None
    _add_special(tok, tokens, types)
    return NPUTokenizer(tok, f"rkllm:{model}", int(bos) if bos is not None else None, add_bos)


def _add_special(tok: Any, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken

    special = [
        AddedToken(tokens[i], special=t == _CONTROL, normalized=False)
        for i, t in enumerate(types[: len(tokens)])
        if t in (_CONTROL, _USER_DEFINED) and tokens[i]
    ]
    if special:
        # The ids already exist in the vocabulary, so these map onto them instead of growing it.
        tok.add_special_tokens([a for a in special if a.special])
        tok.add_tokens([a for a in special if not a.special])


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges if " " in m]
    bpe = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in ("llama-bpe", "llama3"))
    tok = Tokenizer(bpe)
    split = _SPLITS.get(pre or "")
    if split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(tokens: list[str], scores: list[float]) -> Any:
    # SentencePiece vocabularies carry scores, not merges; a Unigram model over those scores
    # segments like the original for the common case (approximate for SPM-BPE vocabularies).
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if len(scores) != len(tokens):
        scores = [0.0] * len(tokens)
    unk = tokens.index("<unk>") if "<unk>" in tokens else 0
    pieces = [(t, float(s)) for t, s in zip(tokens, scores, strict=True)]
    tok = Tokenizer(models.Unigram(pieces, unk, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    return tok
