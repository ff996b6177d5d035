"""An OpenAI-compatible HTTP server over one :class:`~rkllm_core.RKLLMModel` (``rkllm serve``).

Needs the ``[serve]`` extra (Starlette and uvicorn): ``pip install 'rkllm-py[serve]'``. Nothing
here is imported by the rest of ``rkllm_core``, so the board path runs without it.

>>> from rkllm_core.serve import ServeConfig, create_app
>>> app = create_app(model, ServeConfig(api_key="secret"))   # any ASGI server can run it

Modules: :mod:`.config` (options), :mod:`.schema` (OpenAI request bodies), :mod:`.translate`
(OpenAI ↔ core), :mod:`.state` (the model and its queue), :mod:`.admission` (the bounded
queue), :mod:`.auth`, :mod:`.errors`, :mod:`.responses` (disconnect-aware answers), the routes
:mod:`.chat`, :mod:`.completions`, :mod:`.embeddings`, :mod:`.app` (the application, models,
health, readiness), :mod:`.runner` (uvicorn, signals) and :mod:`.cli` (the subcommand).
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # the ASGI stack is imported only when a server is really built
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .runner import serve

        return serve
    raise AttributeError(name)
