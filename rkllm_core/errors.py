"""Typed exceptions of rkllm-py.

Every error a user can trigger is a subclass of :class:`RKLLMError`, and its message says
what was wrong and how to fix it.
"""

from __future__ import annotations


class RKLLMError(Exception):
    """Base class of every error raised by rkllm-py."""


class ConfigError(RKLLMError, ValueError):
    """A configuration or argument value is invalid."""


class ModelNotFoundError(RKLLMError, FileNotFoundError):
    """A model file or directory does not exist or cannot be fetched."""


class ModelFormatError(RKLLMError, ValueError):
    """A model file exists but is not in a format this engine can load."""


class ContextLengthError(RKLLMError, ValueError):
    """A prompt does not fit in the context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, detail: str = "") -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        msg = (
            f"prompt has {prompt_tokens} tokens but only {max_tokens} fit in the context window"
            f" (max_context_len); shorten the prompt, clear the history (clear_kv_cache()) or"
            f" raise RuntimeConfig.max_context_len"
        )
        super().__init__(msg + (f": {detail}" if detail else ""))


class EngineUnavailableError(RKLLMError, RuntimeError):
    """The requested engine cannot run on this machine (missing library or extra)."""


class RuntimeLibraryError(RKLLMError, RuntimeError):
    """librkllmrt.so could not be found, loaded or identified, or returned an error code."""


class RuntimeVersionError(RuntimeLibraryError):
    """The runtime library's version is unknown, contradictory or too old for the model."""


class GenerationError(RKLLMError, RuntimeError):
    """The engine reported an error while running a request."""


class AbortedError(RKLLMError, RuntimeError):
    """The request was aborted before it produced a result (raised where one is required)."""


class RequestTimeoutError(RKLLMError, TimeoutError):
    """A request outlived its ``timeout`` (queue time included) and was stopped or never run.

    Raise ``timeout=`` (seconds) for slow machines, or lower ``max_new_tokens``.
    """


class ModelClosedError(RKLLMError, RuntimeError):
    """The model was closed; create a new RKLLMModel to run more requests."""


class DownloadError(RKLLMError, RuntimeError):
    """A model could not be fetched (no network, unknown name, checksum mismatch)."""


class ToolCallParseError(RKLLMError, ValueError):
    """The model's output announced a tool call that is not valid JSON."""


class BuildConfigError(ConfigError):
    """An argument of the toolkit's ``build()`` (dtype, platform, group size, context,
    calibration dataset …) is invalid; the message says what the platform or model accepts."""


class QuantizationError(RKLLMError, RuntimeError):
    """Calibration or quantization of a model failed (e.g. non-finite activations)."""


class ExportError(RKLLMError, RuntimeError):
    """The toolkit could not export a model (nothing is left half-written)."""


class UnsupportedFeatureError(RKLLMError, NotImplementedError):
    """The loaded runtime (its ABI family) or engine does not offer the requested feature."""


class CacheDirError(RKLLMError, OSError):
    """The cache directory (``$RKLLM_CACHE_DIR``) cannot be created or written."""
