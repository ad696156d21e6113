"""A lean HTTP/1.1 keep-alive client for the plain outbound case: asyncio protocols, httptools.

Delivering a message to an HTTP sink spent more CPU in aiohttp's client than in the rest of the
delivery: ~150 µs a request on bench/http_client_cpu.py's loopback POST, where an asyncio
protocol that writes the request head and feeds the answer to httptools (the C parser uvicorn
uses, llhttp) needs ~35. :class:`H1Pool` is that protocol with what a bus needs around it:
keep-alive connections per origin, a cap on open connections, idle expiry, TLS, the address
guard's resolver and socket check, and httpx's timeouts and exceptions.

It takes only what :meth:`AiohttpTransport.fetch` is given for a small body: a whole request
(``bytes`` body, at most 64 KiB), one at a time per connection, never HEAD (an answer's framing
then depends on the request). Everything else still goes through aiohttp. Errors are the httpx
exceptions aiohttp's are mapped to, so callers classify them the same way.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing
from collections import deque

import httptools
import httpx

# httpcore accepts a response head of up to 100 KiB (as bus.security.aiohttp_transport does).
MAX_HEAD = 100 * 1024


class Answer(typing.NamedTuple):
    status: int
    reason: bytes
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self, pool: H1Pool, key: tuple):
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.used = False  # has carried a request before: a stale keep-alive may fail at once
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._head_bytes = 0  # raw bytes received while the head was open
        self._head_size = 0  # the parsed head's size
        self._head_done = False
        self._framed = False  # Content-Length or chunked: else the body runs to the close
        self._received = False
        self._last_read = 0.0

    # ----- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes nobody asked for: the connection cannot be trusted
            self._close()
            return
        self._received = True
        self._last_read = self.pool.loop.time()
        head_open = not self._head_done
        if head_open:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            return
        # Raw bytes while the head is still open; its parsed size once it closed in this chunk
        # (that chunk may carry much of the body too).
        if head_open and (self._head_size if self._head_done else self._head_bytes) > MAX_HEAD:
            self._fail(httpx.RemoteProtocolError(f"response head larger than {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._forget(self)
        answer = self._answer
        if answer is None or answer.done():
            return
        if self._head_done and not self._framed:  # a body that ends with the connection
            self._complete(keep=False)
        elif not self._received:
            self._fail(httpx.RemoteProtocolError("server disconnected without sending a response"))
        else:
            self._fail(httpx.ReadError(f"connection closed mid-response: {exc or 'EOF'}"))

    # ----- httptools callbacks ----------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._head_done = True
        for name, _ in self._headers:
            low = name.lower()
            if low == b"content-length" or low == b"transfer-encoding":
                self._framed = True
                break
        status = self._parser.get_status_code()
        if status in (204, 304) or 100 <= status < 200:
            self._framed = True  # no body by definition

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._answer is None:  # a second answer to one request: the server is confused
            self._close()
            return
        if 100 <= self._parser.get_status_code() < 200:  # informational (103): the answer follows
            self._reset()
            self._received = True
            return
        self._complete(keep=self._parser.should_keep_alive())

    # ----- one exchange -----------------------------------------------------------------
    def send(self, head: bytes, body: bytes | None, read: float | None) -> asyncio.Future[Answer]:
        """Write one request; the future is its answer. ``read``: the longest wait for a byte."""
        self._reset()
        loop = self.pool.loop
        self._answer = loop.create_future()
        if read is not None:
            self._last_read = loop.time()
            self._timer = loop.call_later(read, self._check_read, read)
        assert self.transport is not None
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self._answer

    def _check_read(self, read: float) -> None:
        left = self._last_read + read - self.pool.loop.time()
        if left > 0:  # bytes came meanwhile: wait out the rest of the gap
            self._timer = self.pool.loop.call_later(left, self._check_read, read)
        else:
            self._timer = None
            self._fail(httpx.ReadTimeout(f"no data from the server for {read:g} s"))

    def _settle(self) -> asyncio.Future[Answer] | None:
        answer, self._answer = self._answer, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return answer

    def _complete(self, *, keep: bool) -> None:
        answer = self._settle()
        version = self._parser.get_http_version()
        result = Answer(self._parser.get_status_code(), self._reason, version, self._headers,
                        b"".join(self._body) if len(self._body) != 1 else self._body[0])
        if answer is not None and not answer.done():
            answer.set_result(result)
        if keep and self.transport is not None and not self.transport.is_closing():
            self.pool._idle_again(self)
        else:
            self._close()

    def _fail(self, exc: Exception) -> None:
        answer = self._settle()
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self._close()

    @property
    def answered_bytes(self) -> bool:
        return self._received

    def _close(self) -> None:
        self.pool._forget(self)
        if self.transport is not None:
            self.transport.close()


class H1Pool:
    """Keep-alive HTTP/1.1 connections per (scheme, host, port), for one event loop.

    ``limit`` caps open connections over all origins (0: no cap); an idle one older than
    ``keepalive`` seconds is closed instead of reused. ``resolve(host, port)`` gives the
    addresses to dial (the guard's checked ones) and ``socket_factory(addr_info)`` makes each
    socket (the guard's last check); without them, the system resolver and plain sockets.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, limit: int, keepalive: float | None,
                 resolve: typing.Callable[[str, int], typing.Awaitable[list[tuple[int, str]]]] | None = None,
                 socket_factory: typing.Callable[..., socket.socket] | None = None):
        self.loop = asyncio.get_running_loop()
        self.ssl_context, self.limit, self.keepalive = ssl_context, limit, keepalive
        self._resolve = resolve or system_resolve
        self._socket_factory = socket_factory or _plain_socket
        self._idle: dict[tuple, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._dialing = 0  # connects under way: they count against the cap too
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def request(self, scheme: str, host: str, port: int, head: bytes, body: bytes | None,
                      timeout: typing.Mapping[str, float | None], *, idempotent: bool) -> Answer:
        """Send one request (``head``: request line and headers, ending in a blank line) and
        read its whole answer. httpx exceptions on failure.

        ``idempotent``: when a kept-alive connection turns out closed by the server before any
        answer, send again once on a new one (aiohttp does the same, for these methods only)."""
        connect, pool = timeout.get("connect"), timeout.get("pool")
        getting = None if connect is None or pool is None else connect + pool
        key = (scheme, host, port)
        conn = self._take_idle(key) or await self._acquire(key, getting, connect)
        try:
            return await conn.send(head, body, timeout.get("read"))
        except httpx.RemoteProtocolError:
            if not (idempotent and conn.used and not conn.answered_bytes):
                raise
        except BaseException:
            if conn._answer is not None:  # cancelled mid-exchange: the connection is unusable
                conn._settle()
                conn._close()
            raise
        conn = await self._acquire(key, getting, connect)
        return await conn.send(head, body, timeout.get("read"))

    def _take_idle(self, key: tuple) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = self.loop.time()
        expiry = self.keepalive
        # The most recently used first (warm, least likely closed by the server); the oldest
        # past its expiry is closed on the way, so a quieter day frees what a busy one opened.
        while expiry is not None and idle and now - idle[0].idle_since > expiry:
            idle.pop(0)._close()
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._forget(conn)
        return None

    async def _acquire(self, key: tuple, getting: float | None, connect: float | None) -> _Connection:
        """An idle connection to ``key``, or a new one once the cap allows; ConnectTimeout
        after ``getting`` seconds (the wait for room and the connect together)."""
        scheme, host, port = key
        try:
            async with asyncio.timeout(getting):
                while True:
                    if self.closed:
                        raise httpx.ConnectError("the client is closed")
                    conn = self._take_idle(key)
                    if conn is not None:
                        return conn
                    if not self.limit or len(self._open) + self._dialing < self.limit:
                        self._dialing += 1
                        try:
                            return await self._dial(key, connect)
                        finally:
                            self._dialing -= 1
                            self._wake()  # a failed dial leaves room; a good one is in _open
                    other = next((idle[0] for k, idle in self._idle.items() if k != key and idle), None)
                    if other is not None:  # room made by an idle connection to another origin
                        other._close()
                        continue
                    waiter = self.loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._wake()  # woken and leaving: pass the turn on
                        raise
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {getting:g} s") from exc

    def _idle_again(self, conn: _Connection) -> None:
        if self.closed:
            conn._close()
            return
        conn.idle_since = self.loop.time()
        conn.used = True
        self._idle.setdefault(conn.key, []).append(conn)
        self._wake()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _dial(self, key: tuple, connect: float | None) -> _Connection:
        scheme, host, port = key
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        tls = self.ssl_context if scheme == "https" else None
        last: BaseException | None = None
        for family, ip in addresses:
            sock = self._socket_factory((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                                         (ip, port)))
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with asyncio.timeout(connect):
                    await self.loop.sock_connect(sock, (ip, port))
                    _, conn = await self.loop.create_connection(
                        lambda: _Connection(self, key), sock=sock, ssl=tls,
                        server_hostname=host if tls is not None else None)
            except TimeoutError as exc:
                sock.close()
                raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from exc
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            self._open.add(conn)
            return conn
        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {last}") from last

    async def aclose(self) -> None:
        self.closed = True
        for conn in list(self._open):
            conn._close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


async def system_resolve(host: str, port: int) -> list[tuple[int, str]]:
    if is_address(host):
        return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(info[0], str(info[4][0])) for info in infos]


def is_address(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


def _plain_socket(addr_info: tuple) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers as sent, Host first (as aiohttp sends it, and as RFC 9112
    asks); LocalProtocolError for a CR or LF in a header (aiohttp and httpx refuse those too:
    they would let a value inject headers)."""
    if headers and headers[0][0].lower() != "host":
        hosts = [item for item in headers if item[0].lower() == "host"]
        if hosts:
            headers = hosts + [item for item in headers if item[0].lower() != "host"]
    lines = [f"{method} {target} HTTP/1.1", *[f"{k}: {v}" for k, v in headers], "", ""]
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
        raise httpx.LocalProtocolError("a header name or value contains a CR or LF")
    return head.encode("latin-1")
