"""Run the app under uvicorn: bind first, load the model in the background, stop cleanly.

Signals: SIGTERM stops taking requests, lets running ones finish for up to ``grace_s``
seconds, then cancels the rest; SIGINT (Ctrl-C) cancels running requests at once. A second
signal stops without waiting. The library never prints: ``on_ready(url)`` tells the caller.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, Literal

import uvicorn

from edgekit.serve.app import State, create_app

GRACE_S = 10.0  # SIGTERM: how long running requests may take to finish before they are cancelled
Outcome = Literal["term", "interrupt", "load_failed"]


class _Stopping(Exception):
    """Raised from the load's progress callback: the server stops, so the load is cancelled."""


class _Server(uvicorn.Server):
    """uvicorn's server that remembers the first signal instead of re-raising it after shutdown,
    and calls ``on_started`` once its socket accepts connections."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[int], None], on_started: Callable[[], None]):
        super().__init__(config)
        self.signal: int | None = None
        self._on_signal = on_signal
        self._on_started = on_started

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = sig
        else:
            self.force_exit = True
        self.should_exit = True
        self._on_signal(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); OSError if the address is taken."""
    return socket.create_server((host, port), backlog=128)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(load: Callable[[Callable[..., None]], Any], state: State, sock: socket.socket, *,
          on_ready: Callable[[str], None] | None = None, on_error: Callable[[BaseException], None] | None = None,
          grace_s: float = GRACE_S) -> Outcome:
    """Serve ``state`` on ``sock`` until a signal (or a failed load); returns why it stopped.

    ``load(progress)`` loads the model (``progress`` is a callback for ``edgekit.load`` that
    cancels the load once the server stops). It runs in a background thread once the socket
    accepts connections; /health answers 503 until it returns, and then ``on_ready(url)`` is
    called. If it raises, ``on_error(exc)`` is called and the server stops.
    """
    stopping = threading.Event()
    failed: list[BaseException] = []
    url = url_of(sock)

    def progress(*_: Any) -> None:
        if stopping.is_set():
            raise _Stopping

    def load_in_background() -> None:
        try:
            model = load(progress)
        except BaseException as exc:  # the caller reports it; the server stops
            if not stopping.is_set():
                failed.append(exc)
                if on_error is not None:
                    on_error(exc)
            server.should_exit = True
            return
        if stopping.is_set():
            model.close()
            return
        state.model = model
        if on_ready is not None:
            on_ready(url)

    loader = threading.Thread(target=load_in_background, name="edgekit-load", daemon=True)

    def on_signal(sig: int) -> None:
        stopping.set()
        if sig == signal.SIGINT:
            state.cancel_all()

    # No lifespan: uvicorn would log a cancelled lifespan task as an error after a second signal.
    # What the grace period leaves running is cancelled by uvicorn (each request then cancels its job).
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=grace_s, lifespan="off")
    server = _Server(config, on_signal, loader.start)
    try:
        server.run(sockets=[sock])
    finally:
        stopping.set()
        state.cancel_all()
        if loader.is_alive():
            loader.join(timeout=grace_s)
        state.executor.shutdown(wait=True, cancel_futures=True)
        if state.model is not None:
            state.model.close()
            state.model = None
    if failed:
        return "load_failed"
    return "interrupt" if server.signal == signal.SIGINT else "term"
