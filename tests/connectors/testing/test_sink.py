"""The fake HTTP sink: recording, idempotency, scripted answers."""

from __future__ import annotations

import httpx
import pytest

from connectors.testing import SinkState, make_sink_app, serve_app


@pytest.fixture
async def client(sink):
    async with httpx.AsyncClient(base_url=sink.url) as c:
        yield c


async def test_records_every_request(client, sink):
    """Method, decoded path, wire target, lower-case headers, raw body and parsed JSON are kept."""
    await client.put("/a%2Fb/c", params={"x": ["1", "2"]}, headers={"X-Tag": "t"}, json={"k": [1]})
    [got] = sink.state.requests
    assert (got.method, got.path, got.target) == ("PUT", "/a/b/c", "/a%2Fb/c?x=1&x=2")
    assert got.headers["x-tag"] == "t"
    assert (got.body, got.json) == (b'{"k":[1]}', {"k": [1]})
    assert got.time > 0
    assert sink.state.delivered == [got]


@pytest.mark.parametrize("header", ["Idempotency-Key", "webhook-id"])
async def test_a_repeated_key_is_answered_once(client, sink, header):
    """A repeat of an answered key gets the first answer again and is counted, not delivered."""
    first = await client.post("/", headers={header: "k1"}, json={"n": 1})
    again = await client.post("/", headers={header: "k1"}, json={"n": 1})
    other = await client.post("/", headers={header: "k2"}, json={"n": 2})
    assert again.json() == first.json() != other.json()
    assert (len(sink.state.requests), len(sink.state.delivered), sink.state.duplicates) == (3, 2, 1)


async def test_fail_next_then_recover_with_the_same_key(client, sink):
    """Scripted failures come first (with Retry-After); a failed key is not remembered."""
    sink.state.fail_next(2, status=429, retry_after=3)
    answers = [await client.post("/", headers={"Idempotency-Key": "k"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "3"
    assert (len(sink.state.delivered), sink.state.duplicates) == (1, 0)


async def test_respond_sets_the_answer(client, sink):
    """respond() changes every later answer; non-2xx answers deliver nothing."""
    sink.state.respond(201, {"id": "T-1"})
    assert (await client.post("/")).json() == {"id": "T-1"}
    sink.state.respond(200, text="ok")
    assert (await client.post("/")).text == "ok"
    sink.state.respond(422, {"error": "bad"})
    assert (await client.post("/")).status_code == 422
    assert len(sink.state.delivered) == 2


async def test_down_answers_503(client, sink):
    """A sink marked down answers 503 and delivers nothing."""
    sink.state.down = True
    assert (await client.post("/")).status_code == 503
    assert (len(sink.state.requests), sink.state.delivered) == (1, [])


async def test_delay_makes_clients_time_out(client, sink):
    """With a delay longer than the client's timeout, the client times out."""
    sink.state.delay = 5
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/", timeout=0.1)


async def test_wait_delivered_reports_shortfall(sink):
    """Waiting for more deliveries than arrive fails saying how many came."""
    with pytest.raises(TimeoutError, match="0 of 1 requests delivered"):
        await sink.state.wait_delivered(1, timeout=0.05)


async def test_in_loop_sink_with_serve_app():
    """A sink can also run in the test's own event loop."""
    state = SinkState()
    async with serve_app(make_sink_app(state)) as url, httpx.AsyncClient() as client:
        await client.post(url + "/x", json={})
        assert [r.path for r in await state.wait_delivered(1)] == ["/x"]
