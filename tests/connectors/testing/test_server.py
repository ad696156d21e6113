"""serve_app and run_in_thread: real loopback servers for tests."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from connectors.testing import run_in_thread, serve_app


async def hello(request):
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", hello)])


async def test_serve_app_in_the_running_loop():
    """serve_app answers on a loopback port while open and stops listening after."""
    async with serve_app(APP) as url:
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).text == "hello"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)


def test_run_in_thread_for_sync_code():
    """run_in_thread serves from a background thread to plain synchronous clients."""
    with run_in_thread(APP) as url:
        assert httpx.get(url).text == "hello"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


@asynccontextmanager
async def broken_lifespan(app):
    raise RuntimeError("database missing")
    yield  # pragma: no cover


async def test_startup_failure_is_an_error_not_an_exit():
    """An app whose startup fails makes serve_app raise, instead of exiting the test process."""
    app = Starlette(lifespan=broken_lifespan)
    with pytest.raises(RuntimeError, match="startup failed"):
        async with serve_app(app):
            pass  # pragma: no cover
