"""Server TLS: real handshakes against uvicorn serving with server_ssl_context()."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from bus.security.tls import server_ssl_context

from .conftest import HELLO, serve_tls


def client_context(cafile: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def get(port: int, ctx: ssl.SSLContext) -> tuple[str, bytes]:
    """One HTTPS GET over a raw TLS stream: the negotiated version and the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    try:
        version = writer.get_extra_info("ssl_object").version()
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return version, await reader.readline()
    finally:
        writer.close()


V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(("min_version", "client", "accepted"), [
    ("1.3", V13, True),
    ("1.3", V12, False),
    ("1.2", V12, True),
    ("1.2", V13, True),
], ids=["default-tls13", "default-refuses-tls12", "configured-tls12", "configured-still-tls13"])
async def test_handshake_versions(cert_files, min_version, client, accepted) -> None:
    """TLS 1.3 always works; a TLS 1.2-only client is refused unless min_version is 1.2."""
    cert, key = cert_files
    async with serve_tls(HELLO, server_ssl_context(cert, key, min_version=min_version)) as port:
        if accepted:
            version, status = await get(port, client_context(cert, client))
            assert version == ("TLSv1.3" if client is V13 else "TLSv1.2")
            assert status.startswith(b"HTTP/1.1 200")
        else:
            # The server's alert arrives as SSLError, or as a reset if it closes first.
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await get(port, client_context(cert, client))


def test_default_minimum_is_tls13(cert_files) -> None:
    """Without min_version the context's floor is TLS 1.3."""
    assert server_ssl_context(*cert_files).minimum_version is ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_version": "1.1"}, "not '1.3' or '1.2'"),
    ({"cert": "/nonexistent/cert.pem"}, "cannot load certificate"),
], ids=["old-version", "missing-cert"])
def test_bad_configuration_is_explained(cert_files, kwargs, message) -> None:
    """A version below 1.2 or an unreadable cert is refused with what to fix."""
    cert, key = cert_files
    args = {"cert": cert, "key": key, **kwargs}
    with pytest.raises(ValueError, match=message):
        server_ssl_context(**args)
