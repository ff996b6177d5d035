"""User-facing configuration: the runtime's RKLLMParam and per-call sampling parameters.

Field names and meanings follow Rockchip's ``rkllm.h`` so that a board user recognises them;
defaults follow Rockchip's own demo (greedy ``top_k=1`` with a mild repeat penalty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

Pooling = Literal["last", "mean", "first"]
EmbeddingStrategy = Literal["plain", "prompteol", "echo"]
# Numbers are taken as numbers only: True, "2048" or 2048.0 for an int, and inf / nan for a
# float are refused (the runtime would read them as 1, fail, or sample garbage).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be 0, 1 or 2, not a bool")
    return value


Mirostat = Annotated[Literal[0, 1, 2], BeforeValidator(_not_bool)]
SEED_RANGE = (-(2**63), 2**63 - 1)  # a 64-bit signed integer, what every sampler accepts


class ConfigValidationError(ValidationError, ConfigError):  # type: ignore[misc]
    """A configuration value was refused: pydantic's error and the project's ConfigError in one,
    so both ``except ValidationError`` and ``except RKLLMError`` catch it. The message names
    each field, the value given and what is accepted."""

    def __str__(self) -> str:
        lines = []
        for err in self.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            field = ".".join(str(p) for p in err["loc"])
            if not field:  # a check across fields: its message names them
                lines.append(f"{self.title}: {msg}")
                continue
            shown = repr(err.get("input"))
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"{self.title}.{field}={shown} is refused: {msg}")
        return "; ".join(lines)


def _wrap(exc: ValidationError) -> ConfigError:
    try:
        return ConfigValidationError.from_exception_data(exc.title, exc.errors())
    except Exception:  # an error pydantic cannot rebuild: keep its text
        return ConfigError(str(exc))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ConfigValidationError:
            raise
        except ValidationError as exc:
            raise _wrap(exc) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ConfigValidationError:
            raise
        except ValidationError as exc:
            raise _wrap(exc) from None


class RuntimeConfig(_Strict):
    """Every field of the runtime's ``RKLLMParam`` (and its ``RKLLMExtendParam``).

    The sampling fields here are the defaults of every run; :class:`SamplingParams` overrides
    them per call. Fields a given runtime family lacks (e.g. ``ignore_eos_token`` before 1.3,
    ``n_batch`` before 1.2.1) are ignored by the NPU engine with a debug log; the PC engine
    honours all of them.
    """

    max_context_len: Int = Field(4096, gt=0, le=131072, description="context window in tokens")
    max_new_tokens: Int = Field(256, gt=0, description="cap on generated tokens per run")
    top_k: Int = Field(1, ge=0, description="1 = greedy; 0 = no top-k filter")
    top_p: Float = Field(0.95, gt=0.0, le=1.0)
    temperature: Float = Field(0.8, ge=0.0)
    repeat_penalty: Float = Field(1.1, gt=0.0)
    frequency_penalty: Float = 0.0
    presence_penalty: Float = 0.0
    mirostat: Mirostat = 0
    mirostat_tau: Float = Field(5.0, gt=0.0)
    mirostat_eta: Float = Field(0.1, gt=0.0)
    n_keep: Int = Field(0, ge=0, description="tokens kept at the start when the window shifts")
    skip_special_token: bool = True
    ignore_eos_token: bool = False
    is_async: bool = False
    img_start: str = ""
    img_end: str = ""
    img_content: str = ""
    # RKLLMExtendParam
    base_domain_id: Int = Field(0, ge=0, le=2**31 - 1)
    embed_flash: bool = False
    enabled_cpus: tuple[Int, ...] = Field(
        (), description="CPU core indices the runtime may use (empty = runtime default)"
    )
    n_batch: Int = Field(1, ge=1, le=255)
    use_cross_attn: bool = False

    @field_validator("enabled_cpus")
    @classmethod
    def _check_cpus(cls, cores: tuple[int, ...]) -> tuple[int, ...]:
        for core in cores:
            if not 0 <= core < 32:
                raise ValueError(f"CPU core index {core} is out of range 0..31")
        if len(set(cores)) != len(cores):
            raise ValueError(f"enabled_cpus lists a core twice: {cores}")
        return tuple(sorted(cores))

    @model_validator(mode="after")
    def _check_window(self) -> RuntimeConfig:
        if self.n_keep >= self.max_context_len:
            raise ValueError(
                f"n_keep ({self.n_keep}) must be smaller than max_context_len"
                f" ({self.max_context_len})"
            )
        return self

    @property
    def enabled_cpus_mask(self) -> int:
        """Bit mask of :attr:`enabled_cpus` (CPU0 = 1 << 0), as the runtime expects it."""
        mask = 0
        for core in self.enabled_cpus:
            mask |= 1 << core
        return mask

    @property
    def enabled_cpus_num(self) -> int:
        """Number of enabled CPU cores."""
        return len(self.enabled_cpus)


# Other spellings of sampling fields (OpenAI, LangChain, LlamaIndex): declared once, here.
SAMPLING_ALIASES: dict[str, str] = {"max_tokens": "max_new_tokens"}


def _also(name: str) -> AliasChoices:
    """The field's own name and its aliases, for pydantic."""
    return AliasChoices(name, *(a for a, n in SAMPLING_ALIASES.items() if n == name))


class SamplingParams(_Strict):
    """Per-call overrides; ``None`` means "use the RuntimeConfig value".

    ``max_tokens`` is accepted as another name of ``max_new_tokens``. :meth:`merge` is the one
    place where defaults and per-call values are combined.
    """

    top_k: Int | None = Field(None, ge=0)
    top_p: Float | None = Field(None, gt=0.0, le=1.0)
    temperature: Float | None = Field(None, ge=0.0)
    repeat_penalty: Float | None = Field(None, gt=0.0)
    frequency_penalty: Float | None = None
    presence_penalty: Float | None = None
    mirostat: Mirostat | None = None
    mirostat_tau: Float | None = Field(None, gt=0.0)
    mirostat_eta: Float | None = Field(None, gt=0.0)
    max_new_tokens: Int | None = Field(
        None, gt=0, validation_alias=_also("max_new_tokens")
    )
    stop: tuple[str, ...] = ()
    seed: Int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])

    @classmethod
    def names(cls) -> frozenset[str]:
        """Every accepted keyword: the fields and their aliases."""
        return frozenset(cls.model_fields) | frozenset(SAMPLING_ALIASES)

    @classmethod
    def merge(cls, *layers: SamplingParams | Mapping[str, Any] | None) -> SamplingParams:
        """Combine layers of values, later layers winning (defaults first, the call last).

        ``None`` values leave the earlier value in place; aliases (``max_tokens``) are
        resolved; an unknown name or a bad value is a :class:`~rkllm_core.ConfigError` that
        names it, raised before anything is queued.
        """
        values: dict[str, Any] = {}
        for layer in layers:
            if layer is None:
                continue
            if isinstance(layer, SamplingParams):
                items = layer.model_dump(exclude_unset=True).items()
            else:
                items = layer.items()
            seen: dict[str, tuple[str, Any]] = {}
            for key, value in items:
                name = SAMPLING_ALIASES.get(key, key)
                if name not in cls.model_fields:
                    raise ConfigError(
                        f"unknown sampling argument {key!r}; valid: {sorted(cls.names())}"
                    )
                if value is None:
                    continue
                if name in seen and seen[name][1] != value:
                    raise ConfigError(
                        f"{seen[name][0]!r} and {key!r} are the same setting; pass one of them"
                    )
                seen[name] = (key, value)
                values[name] = value
        return cls(**values)

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, stop: object) -> object:
        if stop is None:
            return ()
        if isinstance(stop, str):
            stop = (stop,)
        if isinstance(stop, Sequence):
            for item in stop:
                if not isinstance(item, str) or not item:
                    raise ValueError(f"stop strings must be non-empty strings, got {item!r}")
            return tuple(stop)
        return stop

    def resolve(self, config: RuntimeConfig) -> ResolvedSampling:
        """Fill every unset field from ``config``."""
        values = {name: getattr(self, name) for name in SamplingParams.model_fields}
        for name, value in values.items():
            if value is None and hasattr(config, name):
                values[name] = getattr(config, name)
        return ResolvedSampling(**values)


class ResolvedSampling(_Strict):
    """Sampling parameters with every value decided: what an engine receives."""

    top_k: int
    top_p: float
    temperature: float
    repeat_penalty: float
    frequency_penalty: float
    presence_penalty: float
    mirostat: Literal[0, 1, 2]
    mirostat_tau: float
    mirostat_eta: float
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repeat_last_n: int = 64

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax (top_k = 1 or temperature = 0)."""
        return self.mirostat == 0 and (self.top_k == 1 or self.temperature == 0.0)


class EmbeddingConfig(_Strict):
    """How hidden states become an embedding vector.

    ``strategy``: ``plain`` pools the text's own hidden states; ``prompteol`` wraps the text in
    :attr:`prompteol_template` and takes the last token (Jiang et al. 2023); ``echo`` repeats the
    text (:attr:`echo_template`) and pools over the second copy (Springer et al. 2024).
    """

    strategy: EmbeddingStrategy = "prompteol"
    pooling: Pooling = "last"
    normalize: bool = True
    query_instruction: str = ""
    prompteol_template: str = 'This sentence : "{text}" means in one word:"'
    echo_template: str = "Rewrite the sentence: {text}\nRewritten sentence: {text}"
    max_tokens: Int | None = Field(
        None, gt=0, description="embedding window in tokens (default: max_context_len)"
    )
    truncate: bool = False
    """A text longer than the window raises ContextLengthError; True cuts it and logs a
    warning instead."""
    center: bool = False
    """Subtract the model's mean query / passage vector (estimated once per model on a
    built-in sample) before the cosine: hidden states share a large common direction."""
    adapter: bool = True
    """With ``center`` and the ``prompteol`` strategy: map the text's features through the
    fitted embedding adapter of this model when one exists (built in for the demo models, or
    an ``.npz`` in ``<cache>/adapters``; see rkllm_core.retrieval.adapter). False keeps the
    centred last-token state."""
    append_eos: bool = False
    """End every text with the EOS token (dedicated decoder embedding models are trained so)."""
    batch_size: Int = Field(1, ge=1)
    """Texts per forward pass. 1 by default: the NPU runs one sequence at a time anyway, on the
    PC a batch of 8 was no faster (32 FAQ passages, SmolLM2: 14.2 / 12.3 s at 8 against
    13.0 / 8.2 s at 1; padding costs what batching saves), and progress then moves per chunk."""

    @field_validator("prompteol_template")
    @classmethod
    def _has_one_slot(cls, template: str) -> str:
        if template.count("{text}") != 1:
            raise ValueError("prompteol_template must contain '{text}' exactly once")
        return template

    @field_validator("echo_template")
    @classmethod
    def _has_two_slots(cls, template: str) -> str:
        if template.count("{text}") != 2:
            raise ValueError("echo_template must contain '{text}' exactly twice")
        return template

    @model_validator(mode="after")
    def _prompteol_pools_last(self) -> EmbeddingConfig:
        if self.strategy == "prompteol" and self.pooling != "last":
            raise ValueError(
                f"strategy 'prompteol' is defined by its last token: pooling must be 'last',"
                f" got {self.pooling!r} (use strategy 'plain' or 'echo' for {self.pooling!r})"
            )
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> EmbeddingConfig:
        """This configuration with some fields replaced, validated as a whole; an unknown
        name is a ConfigError listing the known ones."""
        if not overrides:
            return self
        unknown = set(overrides) - set(type(self).model_fields)
        if unknown:
            raise ConfigError(
                f"unknown embedding option(s) {sorted(unknown)}; known:"
                f" {sorted(type(self).model_fields)}"
            )
        return type(self)(**{**self.model_dump(), **overrides})

    def vector_key(self) -> tuple[object, ...]:
        """The fields that change a text's raw vector (not normalisation or batching)."""
        return (self.strategy, self.pooling, self.query_instruction, self.prompteol_template,
                self.echo_template, self.max_tokens, self.append_eos)


def _adapter_sampling_fields() -> type[BaseModel]:
    """SamplingParams' fields as framework-class fields: ``max_tokens`` (the frameworks'
    name, ``max_new_tokens`` accepted too) and no ``stop`` (each framework has its own rule
    for stop strings given twice)."""
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for name, info in SamplingParams.model_fields.items():
        if name == "stop":
            continue
        copied = info._copy()  # the same type, bounds and description: declared once
        # the frameworks' spelling is the field's name, the core's stays accepted
        framework_name = next((a for a, n in SAMPLING_ALIASES.items() if n == name), name)
        copied.validation_alias = _also(name)
        fields[framework_name] = (info.annotation, copied)
    return create_model(  # type: ignore[call-overload,no-any-return]
        "SamplingFields",
        __config__=ConfigDict(populate_by_name=True, protected_namespaces=()),
        **fields,
    )


SamplingFields: type[BaseModel] = _adapter_sampling_fields()
"""A pydantic mixin with every sampling field, as the LangChain and LlamaIndex classes declare
them (``None`` = the runtime config's value); :meth:`SamplingParams.merge` reads them back."""


def sampling_defaults(owner: BaseModel) -> dict[str, Any]:
    """The sampling values set on an object with :data:`SamplingFields` (for
    :meth:`SamplingParams.merge`)."""
    return {
        name: getattr(owner, name)
        for name in SamplingFields.model_fields
        if getattr(owner, name) is not None
    }


EMBEDDING_OPTIONS = (
    "strategy", "pooling", "normalize", "query_instruction", "max_tokens", "truncate", "center",
    "adapter", "append_eos", "batch_size",
)
"""The EmbeddingConfig fields a framework class exposes (templates stay core-level)."""


def _adapter_embedding_fields() -> type[BaseModel]:
    """EmbeddingConfig's user options as framework-class fields, each ``None`` by default
    (= the model's own default configuration)."""
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for name in EMBEDDING_OPTIONS:
        info = EmbeddingConfig.model_fields[name]
        copied = info._copy()  # the same type, bounds and description: declared once
        copied.default = None
        fields[name] = (info.annotation | None, copied)
    return create_model(  # type: ignore[call-overload,no-any-return]
        "EmbeddingFields", __config__=ConfigDict(protected_namespaces=()), **fields
    )


EmbeddingFields: type[BaseModel] = _adapter_embedding_fields()
"""A pydantic mixin with the embedding options, as the LangChain and LlamaIndex embedding
classes declare them; :func:`embedding_overrides` reads them back."""


def embedding_overrides(owner: BaseModel) -> dict[str, Any]:
    """The embedding options set on an object with :data:`EmbeddingFields`, validated together
    with the model's defaults by :meth:`EmbeddingConfig.with_overrides`."""
    return {name: getattr(owner, name) for name in EMBEDDING_OPTIONS
            if getattr(owner, name) is not None}
