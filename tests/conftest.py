"""A whole bus on loopback: flows.yaml in a temp dir, a fake sink, the real HTTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog

from bus.http.app import build_app
from bus.http.fast_hooks import hook_protocol
from bus.runtime import Runtime
from bus.transport.base import TERMINAL, MessageState
from connectors.testing.server import bind, serve_app
from connectors.testing.sink import SinkState, make_sink_app

SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLWUyZS10ZXN0cw=="  # base64("test-secret-for-e2e-tests")


@dataclass
class Bus:
    runtime: Runtime
    url: str
    client: httpx.AsyncClient

    async def wait_state(self, mid: str, states=TERMINAL, timeout: float = 10.0) -> MessageState:
        """Wait until message ``mid`` reaches one of ``states``; fail the test on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = await self.runtime.transport.message(mid)
            if rec is not None and rec.state in states:
                return rec.state
            await asyncio.sleep(0.02)
        rec = await self.runtime.transport.message(mid)
        raise AssertionError(f"message {mid} still {rec.state if rec else 'missing'} after {timeout}s")


@pytest.fixture(autouse=True)
def _fresh_logging():
    """Each test starts from structlog's defaults: a CLI test's configure() must not leak."""
    yield
    structlog.reset_defaults()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[SinkState, str]]:
    state = SinkState()
    async with serve_app(make_sink_app(state)) as url:
        yield state, url


@pytest.fixture
def make_bus(tmp_path: Path) -> Callable[..., object]:
    @asynccontextmanager
    async def _bus(flows_yaml: str, mappings: dict[str, str] | None = None, env=None):
        (tmp_path / "mappings").mkdir(exist_ok=True)
        for name, text in (mappings or {}).items():
            (tmp_path / "mappings" / f"{name}.yaml").write_text(text)
        path = tmp_path / "flows.yaml"
        path.write_text(flows_yaml)
        sock, bus_url = bind()  # known before the config loads: ${BUS_URL} (sandbox flows)
        # Values may name the bus's own URL as {BUS_URL} (connectors calling its sandbox).
        own = {k: v.replace("{BUS_URL}", bus_url) for k, v in (env or {}).items()}
        runtime = Runtime.from_file(path, env={"BUS_URL": bus_url, **own})
        await runtime.start()
        try:
            app = build_app(runtime)  # served as `tieline run` serves it: hooks on the fast path
            async with serve_app(app, sock=sock, http=hook_protocol(runtime, app)) as url:
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    yield Bus(runtime, url, client)
        finally:
            await runtime.stop()

    return _bus
