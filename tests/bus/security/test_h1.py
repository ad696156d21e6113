"""bus.security.h1: the lean keep-alive client, against raw loopback servers that script bytes.

Each server counts the connections it accepted, so reuse, the cap and closes are observable.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest

from bus.security.h1 import H1Pool, request_head

from .conftest import HELLO, serve_tls

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
TIMEOUT = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}

Answerer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """A loopback server: ``answer(reader, writer, nth)`` handles the nth request of a connection
    and returns False to close it. Counts connections, the most open at once, and EOFs seen."""

    def __init__(self, answer: Answerer):
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.eofs = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.01)  # the handlers see their EOF and end

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        nth = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                nth += 1
                if not await self.answer(reader, writer, nth):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()


def answering(data: bytes, *, keep: bool = True, delay: float = 0.0) -> Answerer:
    async def answer(reader, writer, nth) -> bool:
        if delay:
            await asyncio.sleep(delay)
        writer.write(data)
        await writer.drain()
        return keep
    return answer


def pool(**kw) -> H1Pool:
    kw.setdefault("ssl_context", ssl.create_default_context())
    kw.setdefault("limit", 10)
    kw.setdefault("keepalive", 30.0)
    return H1Pool(**kw)


async def post(p: H1Pool, port: int, body: bytes = b'{"a":1}', *, method: str = "POST",
               timeout=TIMEOUT, host: str = "127.0.0.1", scheme: str = "http"):
    headers = [("Host", f"{host}:{port}"), ("Content-Length", str(len(body)))]
    return await p.request(scheme, host, port, request_head(method, "/x", headers), body or None,
                           timeout, idempotent=method != "POST")


async def test_connections_are_kept_alive_and_reused():
    async with Server(answering(OK)) as server:
        p = pool()
        for _ in range(5):
            answer = await post(p, server.port)
            assert (answer.status, answer.body, answer.version) == (200, b"{}", "1.1")
        assert server.connections == 1
        await p.aclose()


@pytest.mark.parametrize(("data", "body"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    (b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nuntil the end", b"until the end"),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
], ids=["chunked", "read-to-close", "early-hints", "no-content"])
async def test_answer_bodies_are_framed_as_http_says(data, body):
    async with Server(answering(data, keep="close" not in data.decode())) as server:
        p = pool()
        answer = await post(p, server.port)
        assert answer.body == body
        assert answer.status in (200, 201, 204)
        await p.aclose()


async def test_connection_close_answer_is_not_reused():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with Server(answering(answer)) as server:
        p = pool()
        await post(p, server.port)
        await post(p, server.port)
        assert server.connections == 2
        await p.aclose()


async def test_a_connection_the_server_closed_while_idle_is_replaced():
    async with Server(answering(OK, keep=False)) as server:  # closes without saying so
        p = pool()
        assert (await post(p, server.port)).status == 200
        await asyncio.sleep(0.05)  # its FIN arrives while the connection is idle
        assert (await post(p, server.port)).status == 200
        assert server.connections == 2
        await p.aclose()


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
async def test_a_stale_connection_is_retried_only_for_idempotent_methods(method, retried):
    async def first_only(reader, writer, nth) -> bool:  # drops each connection's 2nd request
        if nth == 2:
            return False
        writer.write(OK)
        await writer.drain()
        return True

    async with Server(first_only) as server:
        p = pool()
        await post(p, server.port, b"", method=method)
        if retried:
            assert (await post(p, server.port, b"", method=method)).status == 200
            assert server.connections == 2
        else:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await post(p, server.port, b"", method=method)
        await p.aclose()


async def test_the_cap_on_open_connections_holds():
    async with Server(answering(OK, delay=0.05)) as server:
        p = pool(limit=2)
        answers = await asyncio.gather(*(post(p, server.port) for _ in range(8)))
        assert [a.status for a in answers] == [200] * 8
        assert server.most_open == 2
        await p.aclose()


async def test_waiting_for_room_past_connect_plus_pool_is_a_connect_timeout():
    async with Server(answering(OK, delay=1.0)) as server:
        p = pool(limit=1)
        slow = asyncio.create_task(post(p, server.port))
        await asyncio.sleep(0.05)
        quick = {"connect": 0.1, "read": 2.0, "write": 2.0, "pool": 0.1}
        with pytest.raises(httpx.ConnectTimeout):
            await post(p, server.port, timeout=quick)
        assert (await slow).status == 200
        await p.aclose()


async def test_silence_is_a_read_timeout_but_a_slow_steady_answer_is_not():
    async def drip(reader, writer, nth) -> bool:
        for i in range(0, len(OK), 8):
            writer.write(OK[i:i + 8])
            await writer.drain()
            await asyncio.sleep(0.1)
        return True

    async def silent(reader, writer, nth) -> bool:
        await asyncio.sleep(5)
        return False

    gap = {"connect": 2.0, "read": 0.3, "write": 2.0, "pool": 2.0}
    async with Server(drip) as dripping, Server(silent) as quiet:
        p = pool()
        assert (await post(p, dripping.port, timeout=gap)).body == b"{}"  # ~0.9 s in all
        with pytest.raises(httpx.ReadTimeout):
            await post(p, quiet.port, timeout=gap)
        await p.aclose()


@pytest.mark.parametrize("data", [
    b"NOT HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (101 * 1024) + b"\r\n\r\n",
], ids=["garbage", "cut-short", "head-too-large"])
async def test_broken_answers_are_protocol_or_read_errors(data):
    async with Server(answering(data, keep=False)) as server:
        p = pool()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await post(p, server.port)
        await p.aclose()


async def test_refused_connection_is_a_connect_error():
    async with Server(answering(OK)) as server:
        port = server.port
    p = pool()
    with pytest.raises(httpx.ConnectError, match=f"127.0.0.1:{port}"):
        await post(p, port)
    await p.aclose()


def test_header_injection_is_refused_before_sending():
    with pytest.raises(httpx.LocalProtocolError):
        request_head("POST", "/x", [("Host", "a"), ("X-Evil", "1\r\nX-Injected: 2")])
    with pytest.raises(httpx.LocalProtocolError):
        request_head("POST", "/x", [("Host", "a"), ("X-Evil", "1\nX-Injected: 2")])
    head = request_head("POST", "/x", [("X-A", "1"), ("Host", "a")])
    assert head == b"POST /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"  # Host first, as aiohttp


async def test_a_cancelled_exchange_closes_its_connection():
    async with Server(answering(OK, delay=0.5)) as server:
        p = pool()
        task = asyncio.create_task(post(p, server.port))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)  # the server's answer finds the connection gone
        assert (await post(p, server.port)).status == 200
        assert server.connections == 2
        await p.aclose()


async def test_the_socket_factory_sees_every_address_dialled():
    seen = []

    def factory(addr_info):
        seen.append(addr_info[4])
        raise httpx.ConnectError("refused by the test's guard")

    async with Server(answering(OK)) as server:
        p = pool(socket_factory=factory)
        with pytest.raises(httpx.ConnectError, match="test's guard"):
            await post(p, server.port)
        assert seen == [("127.0.0.1", server.port)]
        assert server.connections == 0
        await p.aclose()


async def test_tls_is_verified_against_the_context(cert_files):
    cert, key = cert_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with serve_tls(HELLO, server_ctx) as port:
        trusting = pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        headers = [("Host", f"localhost:{port}")]
        answer = await trusting.request("https", "localhost", port, request_head("GET", "/", headers),
                                        None, TIMEOUT, idempotent=True)
        assert answer.status == 200 and b"localhost" in answer.body
        await trusting.aclose()
        strict = pool()  # the system's roots: the self-signed cert is not trusted
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await strict.request("https", "localhost", port, request_head("GET", "/", headers),
                                 None, TIMEOUT, idempotent=True)
        await strict.aclose()


async def test_idle_connections_past_their_expiry_are_closed_not_reused():
    async with Server(answering(OK, delay=0.05)) as server:
        p = pool(keepalive=0.3)
        await asyncio.gather(*(post(p, server.port) for _ in range(3)))  # three connections
        await asyncio.sleep(0.2)
        await post(p, server.port)  # reuses one: fresh again; the other two keep ageing
        await asyncio.sleep(0.2)
        await post(p, server.port)  # the fresh one is reused; the two expired ones are closed
        await asyncio.sleep(0.05)
        assert (server.connections, server.open) == (3, 1)
        await asyncio.sleep(0.35)
        await post(p, server.port)  # now that one expired too: a new connection
        await asyncio.sleep(0.05)
        assert (server.connections, server.open) == (4, 1)
        await p.aclose()


async def test_two_answers_to_one_request_close_the_connection():
    async with Server(answering(OK + OK)) as server:
        p = pool()
        assert (await post(p, server.port)).status == 200
        await asyncio.sleep(0.05)
        assert (await post(p, server.port)).status == 200  # on a new connection, not the confused one
        assert server.connections == 2
        await p.aclose()
