"""Options of one server process (``rkllm serve`` flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EmbeddingsMode = Literal["default", "plain", "prompteol", "echo", "off"]


class ServeConfig(BaseModel):
    """How the server listens, admits and shuts down.

    ``max_queue`` counts requests waiting behind the one the model is running; past it the
    server answers 429 with ``Retry-After``. ``grace_s`` is how long SIGTERM waits for running
    and queued requests before aborting them and closing the model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    max_queue: int = Field(16, ge=0, description="requests waiting behind the running one")
    grace_s: float = Field(30.0, ge=0.0, description="seconds SIGTERM waits for requests")
    request_timeout_s: float | None = Field(
        None, gt=0.0, description="seconds a request may take, queue time included"
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest request body")
    served_names: tuple[str, ...] = Field(
        (), description="model names clients may send; the first is listed by /v1/models"
    )
    embeddings: EmbeddingsMode = "default"
    """``default``: the model's own embedding strategy (as the frameworks use it); a strategy
    name overrides it; ``off`` disables /v1/embeddings."""

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError("api_key is empty; leave it out to serve without a key")
        return key
