"""The plain case of ``httpx.AsyncClient``, without its per-call objects.

Building an httpx Request and Response around each call, and passing it through the client's
auth, redirect, hook and cookie steps, cost more CPU than aiohttp's whole exchange (a third of a
delivered message's CPU). When a client uses none of those steps, :func:`plain_request` builds
the headers, URL and body the client would have put on the wire and sends them straight to its
:class:`~bus.security.aiohttp_transport.AiohttpTransport` (same connector, so the same address
guard); otherwise it returns None and the caller sends with the client as before.
"""

from __future__ import annotations

import typing

import httpx

from bus.security.aiohttp_transport import AiohttpTransport, Reply, Target, ascii_headers


def plain_transport(client: typing.Any) -> AiohttpTransport | None:
    """The :class:`AiohttpTransport` an ``httpx.AsyncClient`` sends through when sending needs
    none of the client's machinery: no auth, event hooks, followed redirects, cookies or default
    params to add, no proxy mounts, no sending steps of its own (a subclass's), not closed.
    None otherwise: send with the client."""
    if (not isinstance(client, httpx.AsyncClient) or _own_steps(type(client))
            or client.is_closed or client.auth is not None
            or client.follow_redirects or client.params or client.cookies
            or client.event_hooks["request"] or client.event_hooks["response"]
            or getattr(client, "_mounts", True)):
        return None
    transport = getattr(client, "_transport", None)
    build = getattr(transport, "real", None)  # a transport built on first use (bus.security.outbound)
    if build is not None:
        transport = build()
    return transport if isinstance(transport, AiohttpTransport) else None


_STEPS = ("build_request", "send", "_send_handling_auth", "_send_handling_redirects",
          "_send_single_request")


def _own_steps(kind: type) -> bool:
    return any(getattr(kind, step) is not getattr(httpx.AsyncClient, step) for step in _STEPS)


def plain_request(client: typing.Any, method: str, url: str, *,
                  params: typing.Mapping[str, typing.Any] | None = None,
                  headers: list[tuple[str, str]], content: bytes | None,
                  timeout: float | None) -> PlainRequest | None:
    """What ``client.build_request(method, url, params=, headers=, content=, timeout=)`` builds,
    as a :class:`PlainRequest` for the client's transport; ``url`` is absolute. None when that
    needs httpx (the client is not plain, a header is not ASCII, the URL carries credentials):
    build and send with the client then. A bad URL raises what ``build_request`` raises."""
    transport = plain_transport(client)
    if transport is None or not ascii_headers(headers):
        return None
    # The client merges query params into the URL (an empty mapping drops the URL's own query).
    merged = httpx.QueryParams().merge(params) if params else params
    target = (transport.target(url) if merged is None
              else Target.of(httpx.URL(httpx.URL(url), params=merged)))
    defaults = transport.defaults(client.headers)
    if not target.plain or defaults is None:
        return None
    method = method.upper()
    # httpx.Headers.update: a key given replaces every header of that name, at the end.
    given = {k.lower() for k, _ in headers}
    wire = [item for item in defaults if item[0].lower() not in given] + headers
    names = {k.lower() for k, _ in wire}
    if content and "content-length" not in names:
        wire.append(("Content-Length", str(len(content))))
        names.add("content-length")
    auto = [] if "host" in names else [("Host", target.netloc)]
    if method in ("POST", "PUT", "PATCH") and not names & {"content-length", "transfer-encoding"}:
        auto.append(("Content-Length", "0"))
    return PlainRequest(client, transport, method, target, auto + wire, content or None, timeout)


async def send_built(client: typing.Any, request: httpx.Request) -> httpx.Response | None:
    """``await client.send(request)`` for a request ``client.build_request`` made, through the
    client's transport's :meth:`~AiohttpTransport.fetch` when sending needs none of the client's
    machinery (see :func:`plain_transport`) and the body is already in memory; None otherwise
    (send with the client then). The response is read, as ``client.send`` reads it."""
    transport = plain_transport(client)
    if transport is None or "sni_hostname" in request.extensions:
        return None
    try:
        content = request.content
    except httpx.RequestNotRead:  # a streamed body: the client sends it
        return None
    enc = request.headers.encoding
    headers = [(k.decode(enc), v.decode(enc)) for k, v in request.headers.raw]
    target = transport.target(str(request.url))
    if not target.plain or not ascii_headers(headers):
        return None
    reply = await transport.fetch(request.method, target, headers, content or None,
                                  request.extensions.get("timeout") or {})
    reply.default_encoding = getattr(client, "_default_encoding", "utf-8")
    response = reply.response()
    response.request = request
    if "set-cookie" in reply.headers:  # for a jar that keeps them (the shared one does not)
        client.cookies.extract_cookies(response)
    return response


class PlainRequest:
    """One request from :func:`plain_request`; :meth:`send` is the client's ``send`` for it."""

    __slots__ = ("client", "transport", "method", "target", "headers", "content", "timeout")

    def __init__(self, client: httpx.AsyncClient, transport: AiohttpTransport, method: str,
                 target: Target, headers: list[tuple[str, str]], content: bytes | None,
                 timeout: float | None):
        self.client, self.transport, self.method, self.target = client, transport, method, target
        self.headers, self.content, self.timeout = headers, content, timeout

    @property
    def url(self) -> httpx.URL:
        return self.target.url

    async def send(self) -> Reply:
        """The answer, body read: what ``await client.send(request)`` gives, as a Reply (its
        ``content`` decoded), with the same httpx exceptions."""
        t = self.timeout
        reply = await self.transport.fetch(self.method, self.target, self.headers, self.content,
                                           {"connect": t, "read": t, "write": t, "pool": t})
        reply.default_encoding = getattr(self.client, "_default_encoding", "utf-8")
        if "set-cookie" in reply.headers:  # for a jar that keeps them (the shared one does not)
            request = httpx.Request(self.method, self.url, headers=self.headers)
            self.client.cookies.extract_cookies(
                httpx.Response(reply.status_code, headers=reply.raw_headers, request=request))
        if "content-encoding" in reply.headers:
            reply.content = reply.response().content
        return reply
