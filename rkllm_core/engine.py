"""The Engine seam: what both engines (NPU and PC) implement, and the events they emit.

An engine runs one :class:`Request` at a time, synchronously, on the model's worker thread,
and reports everything through a :class:`Sink` as events that mirror the runtime's callback.
Nothing above this module knows which engine runs.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from .config import ResolvedSampling
from .errors import ConfigError


def require_text(text: str, what: str = "the prompt") -> str:
    """``text`` if every character can be encoded as UTF-8; a lone surrogate (from bytes
    decoded with ``surrogateescape``, or a broken UTF-16 pair) is a :class:`ConfigError`
    naming its position, where tokenizers and the runtime would fail obscurely."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ConfigError(
            f"{what} contains a lone surrogate U+{ord(bad):04X} at index {exc.start}, which is"
            f" not a character and cannot be encoded as UTF-8; decode the source with"
            f" errors='replace' or remove it"
        ) from None
    return text

FinishReason = Literal["stop", "length", "abort", "error"]


class InferMode(enum.IntEnum):
    """RKLLMInferMode."""

    GENERATE = 0
    LAST_HIDDEN_LAYER = 1
    LOGITS = 2


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptInput:
    """Text passed to the model as is: any chat template has already been applied."""

    text: str

    def __post_init__(self) -> None:
        require_text(self.text)


@dataclass(frozen=True, slots=True)
class TokenInput:
    """Token ids (RKLLM_INPUT_TOKEN)."""

    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TokenBatchInput:
    """Several token sequences, for hidden-state / logits modes only.

    The engine emits one :class:`HiddenStateEvent` (or :class:`LogitsEvent`) per sequence, in
    order, so batched embedding works on every engine (the PC engine pads and runs one forward).
    """

    sequences: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class EmbedInput:
    """Input embeddings (RKLLM_INPUT_EMBED), shape (n_tokens, hidden)."""

    embeds: np.ndarray


@dataclass(frozen=True, slots=True)
class MultimodalInput:
    """A prompt with image embeddings (RKLLM_INPUT_MULTIMODAL)."""

    prompt: str
    image_embeds: np.ndarray
    n_image: int = 1
    image_width: int = 0
    image_height: int = 0

    def __post_init__(self) -> None:
        require_text(self.prompt)


RequestInput = PromptInput | TokenInput | TokenBatchInput | EmbedInput | MultimodalInput


@dataclass(frozen=True, slots=True)
class Request:
    """One run of the model (rkllm_run): input, mode and every per-run parameter."""

    input: RequestInput
    sampling: ResolvedSampling
    mode: InferMode = InferMode.GENERATE
    keep_history: bool = False
    role: str = "user"
    enable_thinking: bool = False
    lora_adapter: str | None = None
    prompt_cache_path: str | None = None
    save_prompt_cache: bool = False


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token; ``text`` holds only whole UTF-8 characters (may be empty)."""

    text: str
    token_id: int


@dataclass(frozen=True, slots=True)
class HiddenStateEvent:
    """Last hidden layer (after the final norm), shape (num_tokens, hidden); a private copy."""

    hidden: np.ndarray


@dataclass(frozen=True, slots=True)
class LogitsEvent:
    """Logits, shape (num_tokens, vocab); a private copy."""

    logits: np.ndarray


@dataclass(frozen=True, slots=True)
class PerfStats:
    """RKLLMPerfStat."""

    prefill_ms: float = 0.0
    prefill_tokens: int = 0
    decode_ms: float = 0.0
    decode_tokens: int = 0
    memory_mb: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode speed (0 when nothing was decoded)."""
        return self.decode_tokens / self.decode_ms * 1000.0 if self.decode_ms > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """The run ended. ``prompt_tokens`` counts what was prefilled in this run."""

    reason: FinishReason
    perf: PerfStats = field(default_factory=PerfStats)
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The engine failed; ``error`` is raised to the caller."""

    error: BaseException


Event = TokenEvent | HiddenStateEvent | LogitsEvent | FinishEvent | ErrorEvent


class Sink(Protocol):
    """Receives an engine's events. ``emit`` returns False to ask the engine to stop now."""

    def emit(self, event: Event) -> bool: ...


# --- what an engine knows about its model ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatTemplateParts:
    """The runtime's simple template: ``system + prefix + user text + postfix``."""

    system: str = ""
    prefix: str = ""
    postfix: str = ""


@dataclass(slots=True)
class EngineInfo:
    """What is known about the loaded model (``None`` = unknown for this model/engine)."""

    backend: Literal["npu", "pc"]
    model_path: str
    model_name: str
    family: str | None = None
    architecture: str | None = None
    context_length: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    num_layers: int | None = None
    platform: str | None = None
    quantization: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = None
    template_parts: ChatTemplateParts | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    embedding_pooling: Literal["last", "mean", "first"] | None = None
    """Set when the model file declares a sentence-embedding model and its pooling
    (sentence-transformers' pooling config): embeddings then follow its convention."""
    # --- what the engine can do (capabilities the layers above decide on) ---
    raw_prompt: bool = True
    """Prompts reach the model unchanged; False once the runtime wraps each turn in its own
    template (NPU ``set_chat_template``): then only the turn's text is sent."""
    supports_keep_history: bool = True
    """The runtime can keep a conversation in its KV cache between runs (not NPU family 1.1)."""
    per_run_sampling: bool = True
    """Sampling values can change per run (NPU before 1.3 takes them only at init)."""
    supports_logits: bool = False
    """The logits mode works (PC engine; NPU from 1.2.0): a forced call among several tools
    then picks its tool by the model's logits."""
    runtime_template: ChatTemplateParts | None = None
    """The runtime's own template, after ``set_chat_template``."""
    runtime_version: str | None = None
    """The runtime library's version (NPU)."""
    extra: dict[str, object] = field(default_factory=dict)
    """Descriptive details for people (library path, file type, checks …); nothing above the
    engine decides on them."""


@runtime_checkable
class Tokenizer(Protocol):
    """The model's tokenizer, as the core needs it."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


@runtime_checkable
class Engine(Protocol):
    """One loaded model on one backend. Methods other than :meth:`abort` are called from one
    thread at a time (the model's worker); :meth:`abort` may be called from any thread."""

    info: EngineInfo
    tokenizer: Tokenizer | None

    def run(self, request: Request, sink: Sink) -> None:
        """Run ``request`` to the end, reporting through ``sink``; ends with Finish or Error."""
        ...

    def abort(self) -> None:
        """Stop the running request as soon as possible (within one token)."""
        ...

    def is_running(self) -> bool: ...

    def clear_kv_cache(
        self,
        keep_system_prompt: bool = False,
        start_pos: Sequence[int] | None = None,
        end_pos: Sequence[int] | None = None,
    ) -> None: ...

    def kv_cache_size(self) -> list[int]:
        """Tokens held in the KV cache, one entry per batch slot."""
        ...

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None: ...

    def set_function_tools(self, system: str, tools_json: str, tool_response_str: str) -> None: ...

    def load_lora(self, path: str, name: str, scale: float = 1.0) -> None: ...

    def load_prompt_cache(self, path: str) -> None: ...

    def release_prompt_cache(self) -> None: ...

    def close(self) -> None:
        """Release the model; idempotent."""
        ...
