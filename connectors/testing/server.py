"""Run an ASGI app on a real loopback port for tests: in the current event loop or in a thread.

    async with serve_app(app) as base_url:      # asyncio tests
        ...
    with run_in_thread(app) as base_url:        # sync tests, or a server shared by a module
        ...

The port is chosen by the OS (bound before uvicorn starts, so it is known at once and a
client connecting early waits in the backlog instead of failing).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from starlette.types import ASGIApp

__all__ = ["bind", "serve_app", "run_in_thread", "free_port"]

STARTUP_TIMEOUT = 10.0


def _bind(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def bind(host: str = "127.0.0.1") -> tuple[socket.socket, str]:
    """A listening socket on a free port and its base URL, for :func:`serve_app`'s ``sock``."""
    sock = _bind(host)
    return sock, f"http://{host}:{sock.getsockname()[1]}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago and has nothing listening (for 'connection refused' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _server(app: ASGIApp, http: type[asyncio.Protocol] | str = "auto") -> uvicorn.Server:
    # log_config=None: leave the test process's logging alone; a short graceful timeout so a
    # handler still sleeping cannot hold shutdown for long.
    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=3,
        http=http,
    )
    return uvicorn.Server(config)


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits the process when the app's startup fails
        raise RuntimeError(f"server startup failed (uvicorn exit code {exc.code}); see the app's lifespan") from None


@asynccontextmanager
async def serve_app(
    app: ASGIApp, host: str = "127.0.0.1", *, sock: socket.socket | None = None,
    http: type[asyncio.Protocol] | str = "auto",
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host`` in the running event loop; yields ``http://host:port``.

    ``sock``: an already bound socket (see :func:`bind`), when the URL must be known before the
    app is built (a bus whose connectors call its own sandbox). ``http``: uvicorn's HTTP
    protocol (a bus serves with ``bus.http.fast_hooks.hook_protocol``, as ``tieline run`` does).
    """
    sock = sock or _bind(host)
    server = _server(app, http)
    task = asyncio.create_task(_serve(server, sock))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError(f"server for {app!r} stopped during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server for {app!r} did not start within {STARTUP_TIMEOUT} s")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextmanager
def run_in_thread(app: ASGIApp, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` from a background thread with its own event loop; yields ``http://host:port``."""
    sock = _bind(host)
    server = _server(app)
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(_serve(server, sock))
        except BaseException as exc:  # noqa: BLE001 — handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=main, name=f"tieline-test-server-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                cause = failure[0] if failure else None
                raise RuntimeError(f"server for {app!r} did not start") from cause
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        sock.close()
