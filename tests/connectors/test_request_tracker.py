"""The request_tracker connector against the fake RT REST2 on loopback."""

from __future__ import annotations

from types import SimpleNamespace

import jsonschema
import pytest

from connectors.base import PermanentError, RetryableError
from connectors.request_tracker import RequestTrackerConnector
from connectors.testing import free_port, serve_app
from connectors.testing.fakes.request_tracker import SANDBOX_TOKEN, RTState, make_rt_app
from connectors.testing.faults import Faults, with_faults

NEW_TICKET = {"Subject": "Parcel lost", "Requestor": "ann@example.com", "Content": "Order 7 never arrived.", "Priority": 50}


@pytest.fixture
async def rt(ctx):
    """A fake RT behind Faults, and a builder of connectors pointed at its /REST/2.0."""
    state, faults, made = RTState(), Faults(), []
    async with serve_app(with_faults(make_rt_app(state), faults)) as url:

        def build(**settings) -> RequestTrackerConnector:
            base = {"base_url": f"{url}/REST/2.0", "token": SANDBOX_TOKEN, "queue": "Support", "timeout": 2}
            conn = RequestTrackerConnector("rt", {**base, **settings})
            made.append(conn)
            return conn

        async def ticket(**fields) -> int:
            return (await build().call("create_ticket", {**NEW_TICKET, **fields}, ctx))["id"]

        yield SimpleNamespace(state=state, faults=faults, url=url, build=build, ticket=ticket)
        for conn in made:
            await conn.close()


@pytest.mark.parametrize("settings, ok", [
    ({"base_url": "https://rt.example/REST/2.0", "token": "t"}, True),
    ({"base_url": "https://rt.example/REST/2.0/", "token": "t", "queue": "General", "max_conflict_retries": 0}, True),
    ({"base_url": "https://rt.example/", "token": "t"}, False),
    ({"base_url": "https://rt.example/REST/2.0", "token": "t", "Queue": "General"}, False),
], ids=["minimal", "full", "not-rest2", "unknown-key"])
def test_config_schema(settings, ok):
    """base_url must be the REST2 root; token is required; unknown keys are refused."""
    assert jsonschema.Draft202012Validator(RequestTrackerConnector.config_schema).is_valid(settings) is ok


async def test_create_ticket_in_the_default_queue(rt, ctx):
    """create_ticket POSTs /ticket with token auth, the default queue and text/plain content."""
    result = await rt.build().call("create_ticket", NEW_TICKET, ctx)
    assert result == {"id": 1, "type": "ticket", "url": f"{rt.url}/REST/2.0/ticket/1"}
    method, path, headers = rt.state.requests[-1]
    assert (method, path, headers["authorization"]) == ("POST", "/REST/2.0/ticket", f"token {SANDBOX_TOKEN}")
    assert headers["traceparent"] == ctx.traceparent
    assert rt.state.tickets[1]["Queue"] == "Support"
    assert rt.state.transactions[1][0]["ContentType"] == "text/plain"


async def test_update_sends_if_match_and_returns_rt_messages(rt, ctx):
    """update_ticket GETs the ETag, PUTs with If-Match, and returns RT's messages."""
    tid = await rt.ticket()
    etag = rt.state.etag(tid)
    result = await rt.build().call("update_ticket", {"id": tid, "Status": "open", "Priority": 70}, ctx)
    assert result == {"id": tid, "messages": [f"Ticket {tid}: Status changed from 'new' to 'open'",
                                             f"Ticket {tid}: Priority changed from '50' to '70'"]}
    put = [r for r in rt.state.requests if r[0] == "PUT"]
    assert [r[2]["if-match"] for r in put] == [etag]


async def test_update_rereads_after_a_concurrent_change(rt, ctx):
    """A 412 (ticket changed between GET and PUT) makes update_ticket read again and succeed."""
    tid = await rt.ticket()
    rt.state.interfere(2)
    result = await rt.build().call("update_ticket", {"id": tid, "Status": "open"}, ctx)
    assert result["messages"] == [f"Ticket {tid}: Status changed from 'new' to 'open'"]
    assert rt.state.conflicts == 2 and rt.state.tickets[tid]["Status"] == "open"


async def test_update_gives_up_after_max_conflict_retries(rt, ctx):
    """Conflicts on every try: RetryableError (status 412) after 1 + max_conflict_retries PUTs."""
    tid = await rt.ticket()
    rt.state.interfere(10)
    with pytest.raises(RetryableError, match="412") as info:
        await rt.build(max_conflict_retries=2).call("update_ticket", {"id": tid, "Status": "open"}, ctx)
    assert info.value.status == 412 and rt.state.conflicts == 3
    assert rt.state.tickets[tid]["Status"] == "new"


@pytest.mark.parametrize("action, message", [("correspond", "Correspondence added"), ("comment", "Comments added")])
async def test_correspond_and_comment(rt, ctx, action, message):
    """correspond/comment POST the message and return RT's messages and the transaction URL."""
    tid = await rt.ticket()
    result = await rt.build().call(action, {"id": tid, "Content": "We are on it.", "Status": "open"}, ctx)
    txn = rt.state.transactions[tid][1]
    assert result == {"id": tid, "messages": [message, f"Ticket {tid}: Status changed from 'new' to 'open'"],
                      "transaction_url": f"{rt.url}/REST/2.0/transaction/{txn['id']}"}
    assert (txn["Type"], txn["Content"], txn["ContentType"]) == (action.title(), "We are on it.", "text/plain")


async def test_get_ticket(rt, ctx):
    """get_ticket reduces RT's ticket to plain fields, with its ETag."""
    tid = await rt.ticket()
    got = await rt.build().call("get_ticket", {"id": tid}, ctx)
    assert got["id"] == tid and got["subject"] == "Parcel lost" and got["status"] == "new"
    assert (got["queue"], got["owner"], got["requestors"]) == ("2", "Nobody", ["ann@example.com"])
    assert got["etag"] == rt.state.etag(tid)


@pytest.mark.parametrize("action, payload, status, words", [
    ("create_ticket", {**NEW_TICKET, "Queue": "Nowhere"}, 400, "HTTP 400: Unable to find queue"),
    ("get_ticket", {"id": 99}, 404, "HTTP 404: Not Found"),
    ("comment", {"id": 99, "Content": "x"}, 404, "Not Found"),
], ids=["unknown-queue", "unknown-ticket", "comment-unknown-ticket"])
async def test_vendor_errors_are_permanent_with_rt_words(rt, ctx, action, payload, status, words):
    """RT's {"message"} goes into the permanent error."""
    with pytest.raises(PermanentError, match=words) as info:
        await rt.build().call(action, payload, ctx)
    assert info.value.status == status


async def test_auth_failure_is_permanent_and_hides_the_token(rt, ctx):
    """A wrong token: 401 Unauthorized, permanent; the token in neither message nor repr."""
    conn = rt.build(token="wrong-rt-token-123")
    with pytest.raises(PermanentError, match="Unauthorized") as info:
        await conn.call("get_ticket", {"id": 1}, ctx)
    assert info.value.status == 401
    for text in (str(info.value), repr(conn), repr(conn.settings), repr(conn.http)):
        assert "wrong-rt-token-123" not in text


@pytest.mark.parametrize("status, retry_after", [(503, None), (429, 2.0)], ids=["503", "429-retry-after"])
async def test_vendor_overload_is_retryable(rt, ctx, status, retry_after):
    """503 and 429 are retryable, carrying Retry-After."""
    rt.faults.fail_next(1, status=status, retry_after=retry_after)
    with pytest.raises(RetryableError) as info:
        await rt.build().call("create_ticket", NEW_TICKET, ctx)
    assert (info.value.status, info.value.retry_after) == (status, retry_after)


async def test_timeout_is_retryable(rt, ctx):
    """No answer within settings.timeout is retryable."""
    rt.faults.slow_next(1, seconds=1)
    with pytest.raises(RetryableError, match="timeout"):
        await rt.build(timeout=0.2).call("get_ticket", {"id": 1}, ctx)


async def test_connection_refused_is_retryable(ctx):
    """Nothing listening: retryable."""
    conn = RequestTrackerConnector("rt", {"base_url": f"http://127.0.0.1:{free_port()}/REST/2.0", "token": "t"})
    with pytest.raises(RetryableError, match="ConnectError"):
        await conn.call("get_ticket", {"id": 1}, ctx)
    await conn.close()


@pytest.mark.parametrize("settings, action, payload, field", [
    ({"queue": None}, "create_ticket", {"Subject": "where?"}, "Queue"),
    ({}, "create_ticket", {"Content": "no subject"}, "Subject"),
    ({}, "correspond", {"id": 1, "Content": "x", "ContentType": "image/png"}, "ContentType"),
    ({}, "update_ticket", {"id": 1}, r"\(payload\)"),
], ids=["no-queue", "no-subject", "bad-content-type", "nothing-to-update"])
async def test_bad_input_is_permanent_without_a_request(rt, ctx, settings, action, payload, field):
    """Bad input fails before any request, naming the field."""
    with pytest.raises(PermanentError, match=field):
        await rt.build(**settings).call(action, payload, ctx)
    assert rt.state.requests == []


async def test_fake_works_mounted_under_a_prefix(ctx):
    """The fake serves under /sandbox/request_tracker and builds URLs with the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    state = RTState()
    async with serve_app(Starlette(routes=[Mount("/sandbox/request_tracker", make_rt_app(state))])) as url:
        base = f"{url}/sandbox/request_tracker/REST/2.0"
        conn = RequestTrackerConnector("rt", {"base_url": base, "token": SANDBOX_TOKEN, "queue": "General"})
        result = await conn.call("create_ticket", NEW_TICKET, ctx)
        await conn.close()
    assert result["url"] == f"{base}/ticket/1"
