"""An httpx transport that sends requests with aiohttp: the httpx API, aiohttp's cheaper I/O.

Connectors keep the ``httpx.AsyncClient`` API (URL building, auth, redirects, cookies, events);
only the wire work moves to one ``aiohttp.ClientSession``, opened on first use in the running
loop. The session does nothing httpx already does above the transport: no redirects, no cookie
jar, no decompression, no proxies or environment settings, and none of aiohttp's own default
headers, so the request on the wire is the one httpx built.

aiohttp errors become the httpx exceptions connectors classify (see :data:`_ERRORS`); httpx
errors raised inside (e.g. by a resolver hook) pass through unchanged. Timeouts follow
``httpx.Timeout``: ``pool + connect`` bounds getting a connection (DNS included), ``connect``
each socket connect, ``read`` the gap between received bytes. aiohttp has no write timeout, so
when every phase is bounded and the body is large or streamed (a small one cannot stall), the
response head must arrive within their sum, else ``WriteTimeout``.

:meth:`AiohttpTransport.fetch` sends without httpx's Request and Response: it is what
:mod:`bus.security.plain_request` uses for a client's plain case. A small body (up to 64 KiB,
not HEAD) goes through :class:`bus.security.h1.H1Pool` instead of aiohttp, with the same
resolver, socket check, limits, timeouts and exceptions: a quarter of aiohttp's CPU. The two
keep separate connection pools (each under ``limits.max_connections``).
"""

from __future__ import annotations

import asyncio
import typing

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from bus.security import h1
from bus.security.outbound import DEFAULT_LIMITS

# aiohttp adds these when absent; httpx decided already whether to send them.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    # most specific first: several aiohttp errors are subclasses of the later ones
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, TLS, DNS (see _message)
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # a malformed response head
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.NetworkError),
    (HttpProcessingError, httpx.RemoteProtocolError),
    (aiohttp.ClientError, httpx.TransportError),
    (ValueError, httpx.LocalProtocolError),  # e.g. a newline in a header value
)
_CAUGHT = tuple(kind for kind, _ in _ERRORS)
_H1_SCHEMES = ("http", "https")
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE", "OPTIONS", "TRACE"})
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "CONNECT", "TRACE"})
# A body up to this size goes into the socket's buffers without waiting: it cannot stall.
_SMALL = 64 * 1024
# httpcore accepts a response head of up to 100 KiB; aiohttp's defaults (8 KiB a line, 128
# lines) would refuse answers httpx read fine, e.g. a long Content-Security-Policy.
_HEAD_LIMITS = {"max_line_size": 100 * 1024, "max_field_size": 100 * 1024, "max_headers": 1000}


def httpx_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception for an aiohttp (or asyncio timeout) error."""
    for kind, target in _ERRORS:
        if isinstance(exc, kind):
            return target(_message(exc))
    raise TypeError(f"no httpx error for {type(exc).__name__}")  # unreachable with _CAUGHT


def _message(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host!r}: {exc.os_error}"
    return str(exc) or type(exc).__name__


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over one ``aiohttp.ClientSession`` (HTTP/1.1 only).

    ``resolver`` and ``socket_factory`` go to ``aiohttp.TCPConnector``: the hooks through which
    a subclass decides which addresses a connection may use; a resolver with a
    ``check_host(host)`` method is also asked about every URL host before sending.
    ``limits.max_connections`` caps open connections and ``keepalive_expiry`` closes idle ones;
    aiohttp has no separate cap on idle connections (``max_keepalive_connections`` is not used).

    :meth:`fetch` is the transport without httpx's Request and Response, for
    :func:`bus.security.plain_request.plain_request`.
    """

    def __init__(self, *, verify: typing.Any = True, limits: httpx.Limits = DEFAULT_LIMITS,
                 resolver: AbstractResolver | None = None,
                 socket_factory: typing.Callable[..., typing.Any] | None = None):
        # httpx's context: the same CA bundle, SSLContext or verify=False as a plain client.
        self.ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        self.limits, self.resolver, self.socket_factory = limits, resolver, socket_factory
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._h1: h1.H1Pool | None = None  # for fetch's small requests
        self._h1_loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple, tuple[aiohttp.ClientTimeout, float | None]] = {}
        self._targets: dict[str, Target] = {}
        self._defaults: dict[tuple, list[tuple[str, str]] | None] = {}
        # aiohttp dials an address host without asking the resolver: a resolver that guards
        # addresses vets those hosts itself (GuardedResolver.check_host), before every request.
        self._vet: typing.Callable[[str], None] = getattr(resolver, "check_host", _no_check)

    def _open(self) -> aiohttp.ClientSession:
        """The session for the running loop (a loop's connections cannot serve another loop)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                ssl=self.ssl_context, limit=self.limits.max_connections or 0,
                keepalive_timeout=self.limits.keepalive_expiry, resolver=self.resolver,
                socket_factory=self.socket_factory)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                skip_auto_headers=_NO_AUTO_HEADERS, trust_env=False, requote_redirect_url=False,
                timeout=aiohttp.ClientTimeout(total=None), **_HEAD_LIMITS)
            self._loop = loop
        return self._session

    def _timeout(self, spec: typing.Mapping[str, float | None]) -> tuple[aiohttp.ClientTimeout,
                                                                         float | None]:
        """aiohttp's timeout for httpx's ``{connect, read, write, pool}``, and the head deadline."""
        key = (spec.get("connect"), spec.get("read"), spec.get("write"), spec.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            connect, read, write, pool = key
            getting = None if connect is None or pool is None else connect + pool
            head = None if None in key else getting + write + read  # type: ignore[operator]
            found = (aiohttp.ClientTimeout(total=None, connect=getting, sock_connect=connect,
                                           sock_read=read), head)
            if len(self._timeouts) < 256:  # requests carry few distinct timeouts; stay bounded
                self._timeouts[key] = found
        return found

    def target(self, url: str) -> Target:
        """:meth:`Target.of` ``httpx.URL(url)``, remembered: a connector calls few distinct URLs."""
        found = self._targets.get(url)
        if found is None:
            found = Target.of(httpx.URL(url))
            if len(self._targets) >= 1024:  # bounded: path parameters may make many
                self._targets.clear()
            self._targets[url] = found
        return found

    def defaults(self, headers: httpx.Headers) -> list[tuple[str, str]] | None:
        """A client's default headers as text, remembered; None if one is not ASCII."""
        raw = tuple(headers.raw)
        found = self._defaults.get(raw, False)
        if found is False:
            found = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
            found = found if ascii_headers(found) else None
            if len(self._defaults) >= 64:  # a client's defaults rarely change
                self._defaults.clear()
            self._defaults[raw] = found
        return found

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._vet(request.url.raw_host.decode("ascii"))
        enc = request.headers.encoding
        headers = [(k.decode(enc), v.decode(enc)) for k, v in request.headers.raw]
        data: typing.Any
        try:
            data = request.content or None
            small = data is None or len(data) <= _SMALL
        except httpx.RequestNotRead:  # a streamed body: aiohttp sends it (chunked if no length)
            data, small = request.stream, False
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        try:
            response = await self._send(
                request.method, URL(str(request.url), encoded=True), headers, data, small,
                request.extensions.get("timeout") or {}, request.extensions.get("sni_hostname"))
            stream: httpx.AsyncByteStream
            if response.content.is_eof():  # the body came with the head (most API answers)
                stream = httpx.ByteStream(response.content.read_nowait())
                response.release()
            else:
                stream = _Body(response)
        except _CAUGHT as exc:
            raise httpx_error(exc) from exc
        return httpx.Response(response.status, headers=response.raw_headers, stream=stream,
                              extensions=_extensions(response))

    async def fetch(self, method: str, target: Target, headers: list[tuple[str, str]],
                    content: bytes | None, timeout: typing.Mapping[str, float | None]) -> Reply:
        """Send and read the whole answer: :meth:`handle_async_request` and ``aread()`` without
        httpx's Request and Response. ``headers`` are the ones on the wire, Host included;
        errors are the same httpx exceptions."""
        self._vet(target.host)
        small = content is None or len(content) <= _SMALL
        if small and method != "HEAD" and target.scheme in _H1_SCHEMES:
            return await self._fetch_h1(method, target, headers, content or None, timeout)
        try:
            response = await self._send(method, target.wire, headers, content or None,
                                        small, timeout, None)
            if response.content.is_eof():
                body = response.content.read_nowait()
                response.release()
            else:
                body = await response.read()
        except _CAUGHT as exc:
            raise httpx_error(exc) from exc
        return Reply(response.status, response.raw_headers, response.headers, body,
                     _extensions(response))

    async def _fetch_h1(self, method: str, target: Target, headers: list[tuple[str, str]],
                        content: bytes | None, timeout: typing.Mapping[str, float | None]) -> Reply:
        """:meth:`fetch` through :class:`bus.security.h1.H1Pool` (a quarter of aiohttp's CPU)."""
        pool = self._h1 if self._h1_loop is asyncio.get_running_loop() else None
        if pool is None or pool.closed:
            pool = self._h1 = h1.H1Pool(ssl_context=self.ssl_context,
                                        limit=self.limits.max_connections or 0,
                                        keepalive=self.limits.keepalive_expiry,
                                        resolve=self._addresses, socket_factory=self.socket_factory)
            self._h1_loop = asyncio.get_running_loop()
        if content is None and method not in _NO_BODY_METHODS and not any(
                k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            headers = [*headers, ("Content-Length", "0")]  # what aiohttp adds (e.g. DELETE)
        answer = await pool.request(target.scheme, target.host, target.port,
                                    h1.request_head(method, target.path, headers), content,
                                    timeout, idempotent=method in _IDEMPOTENT)
        decoded = CIMultiDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers])
        return Reply(answer.status, answer.headers, decoded, answer.body,
                     {"http_version": b"HTTP/" + answer.version.encode("ascii"),
                      "reason_phrase": answer.reason})

    async def _addresses(self, host: str, port: int) -> list[tuple[int, str]]:
        """Where :class:`~bus.security.h1.H1Pool` dials: the resolver's answers (the guard's
        checked ones); an address host as it is, as aiohttp does (``check_host`` vetted it)."""
        if self.resolver is None or h1.is_address(host):
            return await h1.system_resolve(host, port)
        return [(r["family"], r["host"]) for r in await self.resolver.resolve(host, port)]

    async def _send(self, method: str, url: URL, headers: list[tuple[str, str]], data: typing.Any,
                    small: bool, timeout: typing.Mapping[str, float | None],
                    sni: str | None) -> aiohttp.ClientResponse:
        """aiohttp's response, its head read. aiohttp's errors are the caller's to map."""
        session = self._session if self._loop is asyncio.get_running_loop() else None
        if session is None or session.closed:
            session = self._open()
        spec, head = self._timeout(timeout)
        call = session.request(method, url, headers=headers, data=data, allow_redirects=False,
                               timeout=spec, server_hostname=sni)
        if head is None or small:
            return await call
        deadline = asyncio.timeout(head)
        try:
            async with deadline:
                return await call
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            # connect and read have their own timers: the body was still being sent
            raise httpx.WriteTimeout(f"no response within {head:g} s") from exc

    async def aclose(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        if self._h1 is not None and self._h1_loop is asyncio.get_running_loop():
            await self._h1.aclose()
        self._session = self._loop = None
        self._h1 = self._h1_loop = None


def _no_check(host: str) -> None:
    pass


def _extensions(response: aiohttp.ClientResponse) -> dict[str, bytes]:
    version = response.version
    return {"http_version": b"HTTP/%d.%d" % (version.major, version.minor)
            if version else b"HTTP/1.1",
            "reason_phrase": (response.reason or "").encode("latin-1", "replace")}


class Target(typing.NamedTuple):
    """An ``httpx.URL`` and what sending to it takes: aiohttp's URL, the Host header, the host
    the resolver vets; ``plain``: absolute, with a host and no credentials (which a client
    would turn into basic auth)."""

    url: httpx.URL
    wire: URL
    netloc: str
    host: str
    plain: bool
    scheme: str  # what bus.security.h1 dials: http or https (else not its to send)
    port: int
    path: str  # the request target: path and query, as encoded

    @classmethod
    def of(cls, url: httpx.URL) -> Target:
        plain = url.is_absolute_url and bool(url.host) and not url.userinfo
        port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
        return cls(url, URL(str(url), encoded=True), url.netloc.decode("ascii"),
                   url.raw_host.decode("ascii"), plain, url.scheme, port,
                   url.raw_path.decode("ascii"))


class Reply:
    """A whole answer read by :meth:`AiohttpTransport.fetch`: status, headers (aiohttp's
    case-insensitive multidict) and the body as received."""

    __slots__ = ("status_code", "raw_headers", "headers", "content", "extensions",
                 "default_encoding", "_response")

    def __init__(self, status_code: int, raw_headers: typing.Sequence[tuple[bytes, bytes]],
                 headers: typing.Any, content: bytes, extensions: dict[str, bytes]):
        self.status_code, self.raw_headers, self.headers = status_code, raw_headers, headers
        self.content, self.extensions = content, extensions
        self.default_encoding: typing.Any = "utf-8"  # the client's, for response().text
        self._response: httpx.Response | None = None

    def header(self, name: str, default: str = "") -> str:
        """Like ``httpx.Headers.get``: repeated headers joined with ``", "``."""
        values = self.headers.getall(name, ())
        return ", ".join(values) if values else default

    def response(self) -> httpx.Response:
        """The ``httpx.Response`` a client would have returned, body read (and decoded if the
        server compressed it: httpx raises ``DecodingError`` on a bad one)."""
        if self._response is None:
            response = httpx.Response(self.status_code, headers=self.raw_headers,
                                      stream=httpx.ByteStream(self.content),
                                      extensions=self.extensions,
                                      default_encoding=self.default_encoding)
            response.read()
            self._response = response
        return self._response


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp; closing it returns the connection to the pool."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except _CAUGHT as exc:
            raise httpx_error(exc) from exc

    async def aclose(self) -> None:
        self.response.release()


def aiohttp_client(*, verify: typing.Any = True, limits: httpx.Limits = DEFAULT_LIMITS,
                   **kwargs: typing.Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` over :class:`AiohttpTransport` (no address guard)."""
    return httpx.AsyncClient(transport=AiohttpTransport(verify=verify, limits=limits),
                             trust_env=False, **kwargs)


def ascii_headers(headers: list[tuple[str, str]]) -> bool:
    return all(k.isascii() and v.isascii() for k, v in headers)
