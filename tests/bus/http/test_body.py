"""read_limited: the whole body, refused past the limit, a disconnect is a disconnect."""

from __future__ import annotations

import pytest
from starlette.requests import ClientDisconnect, Request

from bus.http.body import BodyTooLarge, read_limited


def request(messages: list[dict], headers: list[tuple[bytes, bytes]] = ()) -> Request:
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    return Request({"type": "http", "headers": list(headers)}, receive)


def part(body: bytes, more: bool = False) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_joins_chunks() -> None:
    """A chunked body comes back whole; empty chunks are skipped."""
    req = request([part(b"ab", True), part(b"", True), part(b"cd")])
    assert await read_limited(req, 10) == b"abcd"


async def test_empty_body() -> None:
    """A request without a body reads as b''."""
    assert await read_limited(request([part(b"")]), 10) == b""


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    """content-length over the limit raises BodyTooLarge without a receive()."""
    req = request([], [(b"content-length", b"11")])
    with pytest.raises(BodyTooLarge) as info:
        await read_limited(req, 10)
    assert info.value.limit == 10


async def test_stream_over_the_limit_is_refused() -> None:
    """Chunks adding up past the limit raise BodyTooLarge, whatever content-length said."""
    req = request([part(b"x" * 6, True), part(b"x" * 6)], [(b"content-length", b"5")])
    with pytest.raises(BodyTooLarge):
        await read_limited(req, 10)


async def test_disconnect_raises_client_disconnect() -> None:
    """A client gone mid-body raises Starlette's ClientDisconnect, as request.stream() does."""
    req = request([part(b"ab", True), {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnect):
        await read_limited(req, 10)
