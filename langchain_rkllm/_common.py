"""What ChatRKLLM and RKLLM share: model fields, lazy shared loading, per-call sampling."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from rkllm_core import (
    RKLLMModel,
    RuntimeConfig,
    SamplingFields,
    SamplingParams,
    load_shared,
    runtime_config_with,
    sampling_defaults,
    short_model_name,
)

# Call arguments that are not sampling but are understood by every class.
_REQUEST_ARGS = ("timeout",)


class ModelFields(BaseModel):
    """Which model a LangChain class runs on, loaded lazily and shared per process (chat
    model, completion LLM, embeddings and reranker on one file keep one copy in memory)."""

    model: str = Field(
        default="smollm2",
        description="Model file (.rkllm for the NPU; HF dir / GGUF for the PC engine) or a"
        " known demo model name such as 'smollm2'.",
    )
    backend: Literal["auto", "npu", "pc"] = "auto"
    """Engine: 'auto' picks the NPU for .rkllm files and the PC engine otherwise."""
    max_context_len: int | None = Field(default=None, gt=0)
    """Context window in tokens (RuntimeConfig.max_context_len)."""
    runtime_config: RuntimeConfig | dict[str, Any] = Field(default_factory=dict)
    """Other RuntimeConfig fields passed through (n_keep, enabled_cpus, embed_flash …)."""
    engine_options: dict[str, Any] = Field(default_factory=dict)
    """Engine keyword options passed to the core (e.g. tokenizer=<dir> for .rkllm files)."""

    _loaded: RKLLMModel | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_runtime_config(self) -> ModelFields:
        self._runtime_config()  # cheap: a bad option fails at construction, not at first call
        return self

    def _runtime_config(self) -> RuntimeConfig:
        return runtime_config_with(self.runtime_config, self.max_context_len)

    def _get_model(self, name: str | None = None) -> RKLLMModel:
        """The loaded model (shared per process); loads it on first use."""
        if name is not None and name != self.model:
            return load_shared(name, runtime_config=self._runtime_config(),
                               backend=self.backend, engine_options=self.engine_options)
        if self._loaded is None or self._loaded.closed:
            self._loaded = load_shared(self.model, runtime_config=self._runtime_config(),
                                       backend=self.backend, engine_options=self.engine_options)
        return self._loaded

    @property
    def core_model(self) -> RKLLMModel:
        """The underlying :class:`rkllm_core.RKLLMModel` (loaded on first access)."""
        return self._get_model()

    @property
    def client(self) -> RKLLMModel:
        """Another name of :attr:`core_model` (LangChain integrations call it ``client``)."""
        return self._get_model()

    @property
    def model_name(self) -> str:
        """A short name of the model (demo name or file stem), for cache namespaces and logs;
        :attr:`model` keeps what was given (a path or a demo name)."""
        return short_model_name(self.model)


class RKLLMParams(ModelFields, SamplingFields):  # type: ignore[misc,valid-type]
    """Fields common to the LangChain chat and completion classes (mixed in before the
    LangChain base class).

    The sampling fields (temperature, top_k, top_p, max_tokens, repeat_penalty, seed …) come
    from the core's :data:`rkllm_core.config.SamplingFields`: declared once, with the same
    bounds as :class:`rkllm_core.SamplingParams`.
    """

    stop: list[str] | None = None
    """Stop strings for every call; per-call ``stop`` is an error when this is set."""
    timeout: float | None = Field(default=None, gt=0.0)
    """Seconds a call may take, time waiting for the model included: a call still queued at
    its deadline never runs, a running one is stopped (core ``timeout=``)."""
    max_retries: int = Field(default=0, ge=0)
    """Accepted for LangChain's standard parameters; local runs are never retried (a failed
    generation fails the same way again)."""

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: list[str] | None) -> list[str] | None:
        if stop is not None:
            SamplingParams(stop=stop)  # same rules as the core: non-empty strings
        return stop

    @model_validator(mode="after")
    def _check_sampling(self) -> RKLLMParams:
        SamplingParams.merge(self._default_sampling())
        return self

    # --- sampling ------------------------------------------------------------------------

    def _default_sampling(self) -> dict[str, Any]:
        return sampling_defaults(self)

    def _resolve_stop(self, stop: list[str] | None) -> list[str]:
        if stop and self.stop:
            raise ValueError(
                f"stop sequences were given both at construction ({self.stop!r}) and for this"
                f" call ({stop!r}); pass them in one place only"
            )
        return list(stop or self.stop or [])

    def _call_options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Core keyword arguments of one call: sampling (instance defaults, then per-call
        values, merged by the core) and the deadline.

        ``kwargs`` is consumed: what remains is unknown to this class.
        """
        per_call = {k: kwargs.pop(k) for k in list(kwargs) if k in SamplingParams.names()}
        timeout = kwargs.pop("timeout", None) or self.timeout
        merged = SamplingParams.merge(self._default_sampling(), per_call,
                                      {"stop": self._resolve_stop(stop)})
        return {**merged.model_dump(exclude_unset=True), "timeout": timeout}


def check_no_unknown(kwargs: dict[str, Any], cls_name: str) -> None:
    """Reject call arguments nothing understood (a typo would otherwise be silently lost)."""
    if kwargs:
        raise TypeError(
            f"{cls_name} got unexpected call argument(s) {sorted(kwargs)}; sampling arguments"
            f" are {sorted(SamplingParams.names() - {'stop'})}, 'stop' and"
            f" {list(_REQUEST_ARGS)}"
        )
