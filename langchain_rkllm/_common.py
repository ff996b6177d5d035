"""What ChatRKLLM and RKLLM share: model fields, lazy shared loading, per-call sampling."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from rkllm_core import (
    PerfStats,
    RKLLMModel,
    RuntimeConfig,
    SamplingParams,
    shared_model,
)

# LangChain name → core SamplingParams name; everything else in SamplingParams keeps its name.
_RENAMED = {"max_tokens": "max_new_tokens"}
SAMPLING_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "max_tokens",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "seed",
)


class RKLLMParams(BaseModel):
    """Fields common to the LangChain classes (mixed in before the LangChain base class)."""

    model: str = Field(
        default="smollm2",
        description="Model file (.rkllm for the NPU; HF dir / GGUF for the PC engine) or a"
        " known demo model name such as 'smollm2'.",
    )
    backend: Literal["auto", "npu", "pc"] = "auto"
    """Engine: 'auto' picks the NPU for .rkllm files and the PC engine otherwise."""
    max_context_len: int | None = Field(default=None, gt=0)
    """Context window in tokens (RuntimeConfig.max_context_len)."""
    runtime_config: dict[str, Any] = Field(default_factory=dict)
    """Other RuntimeConfig fields passed through (n_keep, enabled_cpus, embed_flash …)."""
    engine_options: dict[str, Any] = Field(default_factory=dict)
    """Engine keyword options passed to the core (e.g. tokenizer=<dir> for .rkllm files)."""

    temperature: float | None = Field(default=None, ge=0.0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, gt=0)
    """Cap on generated tokens per call (RuntimeConfig.max_new_tokens when unset)."""
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_tau: float | None = Field(default=None, gt=0.0)
    mirostat_eta: float | None = Field(default=None, gt=0.0)
    seed: int | None = None
    stop: list[str] | None = None
    """Stop strings for every call; per-call ``stop`` is an error when this is set."""
    timeout: float | None = Field(default=None, gt=0.0)
    """Seconds a call may take; checked between tokens, the request is aborted past it."""
    max_retries: int = Field(default=0, ge=0)
    """Accepted for LangChain's standard parameters; local runs are never retried (a failed
    generation fails the same way again)."""

    _loaded: RKLLMModel | None = PrivateAttr(default=None)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: list[str] | None) -> list[str] | None:
        if stop is not None:
            SamplingParams(stop=stop)  # same rules as the core: non-empty strings
        return stop

    @model_validator(mode="after")
    def _check_runtime(self) -> RKLLMParams:
        # Validate now (cheap) so a bad option fails at construction, not at first call.
        self._runtime_config()
        SamplingParams(**self._default_sampling())
        return self

    # --- model ---------------------------------------------------------------------------

    def _runtime_config(self) -> RuntimeConfig:
        values = dict(self.runtime_config)
        if self.max_context_len is not None:
            values["max_context_len"] = self.max_context_len
        try:
            return RuntimeConfig(**values)
        except Exception as exc:
            raise ValueError(f"invalid runtime_config {values!r}: {exc}") from exc

    def _get_model(self, name: str | None = None) -> RKLLMModel:
        """The loaded model (shared per process); loads it on first use."""
        if name is not None and name != self.model:
            return shared_model(
                name, self._runtime_config(), backend=self.backend, **self.engine_options
            )
        if self._loaded is None or self._loaded.closed:
            self._loaded = shared_model(
                self.model, self._runtime_config(), backend=self.backend, **self.engine_options
            )
        return self._loaded

    @property
    def client(self) -> RKLLMModel:
        """The underlying :class:`rkllm_core.RKLLMModel` (loaded on first access)."""
        return self._get_model()

    # --- sampling ------------------------------------------------------------------------

    def _default_sampling(self) -> dict[str, Any]:
        values = {}
        for name in SAMPLING_FIELDS:
            value = getattr(self, name)
            if value is not None:
                values[_RENAMED.get(name, name)] = value
        return values

    def _resolve_stop(self, stop: list[str] | None) -> list[str]:
        if stop and self.stop:
            raise ValueError(
                f"stop sequences were given both at construction ({self.stop!r}) and for this"
                f" call ({stop!r}); pass them in one place only"
            )
        return list(stop or self.stop or [])

    def _call_sampling(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Sampling kwargs for the core: instance defaults, then per-call overrides.

        ``kwargs`` is consumed: sampling keys are removed, so what remains is unknown.
        """
        values = self._default_sampling()
        for name in SAMPLING_FIELDS:
            if name in kwargs:
                value = kwargs.pop(name)
                if value is not None:
                    values[_RENAMED.get(name, name)] = value
        if "max_new_tokens" in kwargs:  # the core's own name is accepted too
            values["max_new_tokens"] = kwargs.pop("max_new_tokens")
        values["stop"] = self._resolve_stop(stop)
        SamplingParams(**values)  # a clear error before anything is queued
        return values


def check_no_unknown(kwargs: dict[str, Any], cls_name: str) -> None:
    """Reject call arguments nothing understood (a typo would otherwise be silently lost)."""
    if kwargs:
        raise TypeError(
            f"{cls_name} got unexpected call argument(s) {sorted(kwargs)}; sampling arguments"
            f" are {list(SAMPLING_FIELDS)} and 'stop'"
        )


def perf_metadata(perf: PerfStats) -> dict[str, Any]:
    """Timings of one request, as response metadata."""
    return {
        "prefill_ms": round(perf.prefill_ms, 3),
        "prefill_tokens": perf.prefill_tokens,
        "decode_ms": round(perf.decode_ms, 3),
        "decode_tokens": perf.decode_tokens,
        "decode_tokens_per_s": round(perf.decode_tokens_per_s, 3),
        "memory_mb": round(perf.memory_mb, 3),
    }


class Deadline:
    """A per-call time limit checked between tokens."""

    def __init__(self, seconds: float | None) -> None:
        self._end = time.monotonic() + seconds if seconds else None
        self.seconds = seconds

    def expired(self) -> bool:
        """True once the limit has passed."""
        return self._end is not None and time.monotonic() > self._end
