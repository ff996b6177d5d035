"""What one server process holds: the model (loaded now or at startup), its queue, its names."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .. import RKLLMModel
from .admission import Admission
from .config import ServeConfig
from .errors import APIError
from .translate import now, raise_for_model

log = logging.getLogger(__name__)

ModelSource = RKLLMModel | Callable[[], RKLLMModel]
"""A loaded model, or a function that loads one (called off the event loop at startup)."""


class ServerState:
    """The model (once loaded), the queue and the names it is served under."""

    def __init__(self, source: ModelSource, config: ServeConfig, close_model: bool) -> None:
        self.config = config
        self.admission = Admission(config.max_queue)
        self.close_model = close_model
        self.model: RKLLMModel | None = source if isinstance(source, RKLLMModel) else None
        self._loader = None if isinstance(source, RKLLMModel) else source
        self.load_error: BaseException | None = None
        self.on_load_failure: Callable[[BaseException], None] | None = None
        self.created = now()

    async def load(self) -> None:
        """Load the model off the event loop (once)."""
        if self.model is not None or self._loader is None:
            return
        start = time.monotonic()
        try:
            self.model = await asyncio.to_thread(self._loader)
        except BaseException as exc:
            self.load_error = exc
            log.error("the model failed to load: %s", exc)
            if self.on_load_failure is not None:
                self.on_load_failure(exc)
            return
        log.info("model %s loaded in %.1f s", self.model.name, time.monotonic() - start)

    @property
    def served_names(self) -> tuple[str, ...]:
        """Names a request may use; the first is the one /v1/models lists."""
        names = list(self.config.served_names)
        if self.model is not None and self.model.name not in names:
            names.append(self.model.name)
        return tuple(names)

    def ready_model(self, requested: str) -> RKLLMModel:
        """The model for a request naming ``requested``; 404 / 503 when it cannot run."""
        if self.admission.draining:
            raise APIError(503, "the server is shutting down; retry on another server",
                           type="server_error", code="shutting_down",
                           headers={"Retry-After": "1"})
        if self.model is None:
            if self.load_error is not None:
                raise APIError(503, f"the model failed to load: {self.load_error}",
                               type="server_error", code="model_load_failed")
            raise APIError(503, "the model is still loading; retry shortly (GET /ready)",
                           type="server_error", code="model_loading",
                           headers={"Retry-After": "5"})
        raise_for_model(requested, self.served_names)
        return self.model
