"""Running the app under uvicorn: the listening socket, SIGTERM draining, a background mode.

SIGTERM (or Ctrl-C) makes the server refuse new requests (503, ``/ready`` says draining),
stop listening, let running and queued requests finish for ``grace_s`` seconds, abort what is
left, and close the model: the process then exits 0, which is what a service manager expects.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from .app import create_app, server_state
from .config import ServeConfig
from .state import ModelSource, ServerState

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, draining our admission when a signal arrives."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self._state.admission.draining:
            log.warning("signal %s: draining (grace %.0f s)", sig, self._state.config.grace_s)
        self._state.admission.draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version raises the signal again after shutdown, so the process would
        # die of SIGTERM; a server that drained cleanly should exit 0 instead
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, config: ServeConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=config.grace_s,  # type: ignore[arg-type]  # a float works
        lifespan="on",
    )


def serve(model: ModelSource, config: ServeConfig | None = None, *, close_model: bool = True,
          log_level: str = "info") -> int:
    """Serve ``model`` until SIGTERM / SIGINT; returns the exit status.

    A model that fails to load stops the server and its error is raised.
    """
    config = config or ServeConfig()
    app = create_app(model, config, close_model=close_model)
    state = server_state(app)
    server = _Server(_uvicorn_config(app, config, log_level), state)

    def stop(exc: BaseException) -> None:
        server.should_exit = True

    state.on_load_failure = stop
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    log.warning("rkllm serve: listening on http://%s:%s (model loading)", host, port)
    # the line tools and tests read to find the port when it was chosen by the system
    print(f"rkllm serve: listening on http://{host}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if state.load_error is not None:
        raise state.load_error
    return 0


class BackgroundServer:
    """A server on a thread of this process (tests, benchmarks, notebooks).

    >>> with BackgroundServer(model) as srv:
    ...     OpenAI(base_url=srv.base_url, api_key="-")
    """

    def __init__(self, model: ModelSource, config: ServeConfig | None = None, *,
                 close_model: bool = False, log_level: str = "warning") -> None:
        self.config = config or ServeConfig(port=0)
        self.app = create_app(model, self.config, close_model=close_model)
        self.state = server_state(self.app)
        self._server = _Server(_uvicorn_config(self.app, self.config, log_level), self.state)
        self._sock = bind(self.config.host, self.config.port)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="rkllm-serve", daemon=True)

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what OpenAI clients take."""
        return f"http://{self.config.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.config.host}:{self.port}"

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start and wait until the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Drain as on SIGTERM and wait for the thread."""
        self.state.admission.draining = True
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
