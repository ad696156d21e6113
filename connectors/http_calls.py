"""Sending HTTP calls for connectors: failures become Retryable/Permanent errors, never secrets.

Shared by every HTTP-based connector (``http``, ``webhook`` replies, ``kannel``, ``callcenter``,
...): :func:`send` sends an ``httpx.Request`` and classifies what went wrong (timeouts and
connection errors retryable; 429/5xx by :func:`~connectors.base.classify_http_status`; a bad URL
permanent), naming the connector and host; :func:`result_of` reads the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import httpx
import orjson
import structlog

from connectors.base import PermanentError, RetryableError, classify_http_status

log = structlog.get_logger("connectors.http")
T = TypeVar("T")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (vendors echo credentials back sometimes)."""
    for secret in secrets:
        if len(secret) >= 4:  # a 1-3 character "secret" would blank out ordinary text
            text = text.replace(secret, "***")
    return text


def where(url: httpx.URL) -> str:
    """``METHOD``-free description of a target: scheme, host, port and path; no userinfo, no query."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


async def send(
    client: httpx.AsyncClient, request: httpx.Request, *, name: str, secrets: Iterable[str] = ()
) -> httpx.Response:
    """Send ``request``; raise Retryable/Permanent errors naming connector and host, never secrets."""
    target = f"connector {name!r}: {request.method} {where(request.url)}"
    response = await transported(client_send(client, request), target, secrets)
    log.debug("http_call", connector=name, method=request.method, target=where(request.url),
              status=response.status_code)
    if response.status_code >= 400:
        raise failure(response, target, secrets)
    return response


async def client_send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``await client.send(request)``, with the same answer and exceptions, through the plain
    path when the client needs none of its steps (bus.security.plain_request.send_built: about
    a third less CPU). For connectors that classify failures themselves."""
    from bus.security.plain_request import send_built  # loads aiohttp: on the first call

    response = await send_built(client, request)
    return response if response is not None else await client.send(request)


async def transported(pending: Awaitable[T], target: str, secrets: Iterable[str]) -> T:
    """``await pending``; its transport failures raised as Retryable/Permanent errors."""
    try:
        return await pending
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{target}: timed out ({type(exc).__name__})") from None
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        detail = redact(str(exc), secrets) or "no detail"
        raise RetryableError(f"{target}: {type(exc).__name__}: {detail}") from None
    except httpx.HTTPError as exc:  # bad URL or header, unsupported scheme: a retry cannot help
        detail = redact(str(exc), secrets) or "no detail"
        raise PermanentError(f"{target}: {type(exc).__name__}: {detail}") from None


def failure(response: httpx.Response, target: str, secrets: Iterable[str]) -> Exception:
    """The Retryable/Permanent error for a failure status, with its body's text, redacted."""
    err = classify_http_status(
        response.status_code, response.headers.get("retry-after"), redact(response.text, secrets)
    )
    err.args = (f"{target}: {err.args[0]}",)
    return err


def result_of(response: httpx.Response) -> Any:
    """The parsed JSON body, or ``{"status", "text"}`` when the body is not JSON."""
    content = response.content
    if content and ("json" in response.headers.get("content-type", "") or content[:1] in (b"{", b"[")):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return {"status": response.status_code, "text": response.text}
