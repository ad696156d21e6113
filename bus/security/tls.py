"""Server TLS: TLS 1.3 only by default; TLS 1.2 only when configured (``min_version="1.2"``).

Handing the context to uvicorn (``ssl_context_factory`` exists since uvicorn 0.47.0)::

    ctx = server_ssl_context("cert.pem", "key.pem")
    config = uvicorn.Config(app, host="0.0.0.0", port=8443, **uvicorn_ssl(ctx))
    await uvicorn.Server(config).serve()

``uvicorn_ssl`` returns ``{"ssl_context_factory": ...}``: uvicorn calls the factory from
``Config.load()`` and uses what it returns as is (no subclassing of ``Config`` needed). The
``ssl_certfile``/``ssl_version`` options would build uvicorn's own context instead, whose
minimum is whatever OpenSSL allows.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from os import PathLike
from typing import Any, Literal

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites when 1.2 is allowed: forward-secret AEAD only (1.3 suites are fixed by OpenSSL).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_ssl_context(cert: str | PathLike[str], key: str | PathLike[str], *,
                       min_version: Literal["1.2", "1.3"] = "1.3", password: str | None = None,
                       alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A server context for ``cert``/``key`` (PEM) refusing anything older than ``min_version``."""
    if min_version not in _VERSIONS:
        raise ValueError(f"tls.min_version: {min_version!r} is not '1.3' or '1.2'")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    if min_version == "1.2":
        ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key, password)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls: cannot load certificate {cert} with key {key}: {exc}; "
                         "both must be PEM files and the key must match the certificate") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def uvicorn_ssl(ctx: ssl.SSLContext) -> dict[str, Callable[..., ssl.SSLContext]]:
    """Keyword arguments for ``uvicorn.Config`` that make it serve with ``ctx``."""

    def factory(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return ctx

    return {"ssl_context_factory": factory}
