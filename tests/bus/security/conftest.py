"""Shared pieces for the security tests: settings, keys, a guarded app, a self-signed cert."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bus.http.responses import JSON
from bus.security.clients import (
    Client,
    ClientRegistry,
    SecuritySettings,
    SigningSettings,
    hash_secret,
)
from bus.security.guard import Guard
from bus.security.oauth import token_route
from bus.security.tls import uvicorn_ssl
from bus.security.tokens import TokenService, load_keys

HS_KEY = "k" * 40
SECRET = "s3cr3t-Value:with+odd/chars%"
FAST = 1_000  # PBKDF2 rounds in tests: the cost is the same code path, only cheaper


def make_settings(**changes) -> SecuritySettings:
    clients = {
        "sp": Client("sp", hash_secret(SECRET, iterations=FAST),
                     frozenset({"flows:read", "messages:read", "flow:ticket_status"}),
                     {"ticket_status": ("id", "status", "updated_at")}),
        "ops": Client("ops", hash_secret("ops-secret", iterations=FAST), frozenset({"flows:read"})),
    }
    base = SecuritySettings(issuer="https://tieline.local", audience="tieline-api",
                            signing=SigningSettings(alg="HS256", key=HS_KEY), clients=clients)
    return replace(base, **changes)


@pytest.fixture
def settings() -> SecuritySettings:
    return make_settings()


@pytest.fixture
def registry(settings: SecuritySettings) -> ClientRegistry:
    return ClientRegistry(settings.clients)


@pytest.fixture
def tokens(settings: SecuritySettings) -> TokenService:
    return TokenService(settings, load_keys(settings.signing))


def make_app(registry: ClientRegistry, tokens: TokenService, **route_kw) -> Starlette:
    """Token endpoint plus one route per guard style, echoing the principal."""
    guard = Guard(tokens, registry)

    @guard.require("flows:read")
    async def flows(request: Request) -> JSON:
        p = request.state.principal
        return JSON({"client_id": p.client_id, "scopes": sorted(p.scopes)})

    @guard.require("admin:write")
    async def admin(request: Request) -> JSON:
        return JSON({"ok": True})

    return Starlette(routes=[token_route(registry, tokens, **route_kw),
                             Route("/flows", flows), Route("/admin", admin)])


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed EC cert for localhost, svc.test and 127.0.0.1 (its own trust anchor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tieline test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("svc.test"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@asynccontextmanager
async def serve_tls(app, ctx: ssl.SSLContext) -> AsyncIterator[int]:
    """Serve ``app`` over TLS on 127.0.0.1 with ``ctx`` handed to uvicorn; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=1, **uvicorn_ssl(ctx))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def hello(request: Request) -> JSON:
    return JSON({"host": request.headers.get("host")})


HELLO = Starlette(routes=[Route("/", hello)])
