"""Sync API flows on loopback: a request runs the steps inline and the reply step answers."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from bus.http.app import build_app
from bus.http.sync_routes import routes as sync_routes
from bus.runtime import Runtime
from connectors.testing.server import serve_app


def flows(sink_url: str, *, lookup_extra: str = "", settings: str = "") -> str:
    return f"""
version: 1
settings:
  data_dir: ./data
  outbound: {{allow: [127.0.0.1]}}
connectors:
  desk:
    type: http
    settings: {{base_url: "{sink_url}", timeout: 2}}
{settings}
flows:
  lookup:
    from: {{http: "GET /api/tickets/{{id}}"}}
    timeout: 1s
    steps:
      - to: desk.request
        map:
          fields:
            method: {{const: GET}}
            path: "join('', ['/tickets/', body.params.id])"
            query.verbose: body.query.verbose
        as: ticket
{lookup_extra}
      - reply:
          map:
            fields:
              id: body.params.id
              subject: context.ticket.subject
  create:
    from: {{http: "POST /api/tickets"}}
    steps:
      - validate: {{type: object, required: [body], properties: {{body: {{type: object, required: [subject]}}}}}}
      - to: desk.request
        map: {{fields: {{method: {{const: POST}}, path: {{const: /tickets}}, json: body.body}}}}
        as: made
      - reply: {{status: 201, map: {{fields: {{id: context.made.id}}}}}}
  ping:
    from: {{http: "DELETE /api/ping"}}
    steps:
      - filter: "body.query.go == 'yes'"
      - to: desk.request
        map: {{fields: {{method: {{const: POST}}, path: {{const: /ping}}}}}}
"""


@pytest.fixture
def make_sync(tmp_path: Path):
    @asynccontextmanager
    async def _bus(text: str):
        (tmp_path / "flows.yaml").write_text(text)
        runtime = Runtime.from_file(tmp_path / "flows.yaml", env={})
        await runtime.start()
        app = Starlette(routes=[*build_app(runtime).routes, *sync_routes(runtime)])
        try:
            async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
                yield runtime, c
        finally:
            await runtime.stop()

    return _bus


async def test_get_runs_steps_and_replies(make_sync, sink):
    """Path params and query reach the mapping; the reply step's mapping is the answer."""
    state, url = sink
    state.respond(200, {"subject": "broken phone"})
    async with make_sync(flows(url)) as (runtime, client):
        r = await client.get("/api/tickets/T-7", params={"verbose": "1"})
        assert r.status_code == 200, r.text
        assert r.json() == {"id": "T-7", "subject": "broken phone"}
        assert await runtime.transport.search() == []  # no durable message, no ledger
    (req,) = state.requests
    assert (req.method, req.path, req.query) == ("GET", "/tickets/T-7", {"verbose": "1"})


async def test_post_body_and_status(make_sync, sink):
    """A JSON body is body.body; reply {status: 201} answers 201."""
    state, url = sink
    state.respond(200, {"id": 42})
    async with make_sync(flows(url)) as (_, client):
        r = await client.post("/api/tickets", json={"subject": "hi"})
    assert (r.status_code, r.json()) == (201, {"id": 42})
    assert state.requests[0].json == {"subject": "hi"}


@pytest.mark.parametrize(("fail", "status", "code"), [
    ({"status": 404}, 404, "not_found"),
    ({"status": 400}, 502, "upstream_error"),
    ({"status": 503, "retry_after": 7}, 503, "upstream_unavailable"),
], ids=["404", "permanent", "retryable"])
async def test_connector_errors_map_to_http(make_sync, sink, fail, status, code):
    """A connector's 404 is a 404, other permanent errors 502, retryable ones 503 + Retry-After."""
    state, url = sink
    state.fail_next(1, **fail)
    async with make_sync(flows(url)) as (_, client):
        r = await client.get("/api/tickets/T-1")
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert set(r.json()["error"]) == {"code", "message", "details"}
    if status == 503:
        assert r.headers["retry-after"] == "7"


async def test_validate_failure_is_400(make_sync, sink):
    """A request failing the validate step is refused with 400 and nothing is called."""
    state, url = sink
    async with make_sync(flows(url)) as (_, client):
        r = await client.post("/api/tickets", json={"no_subject": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert state.requests == []


async def test_no_reply_is_204(make_sync, sink):
    """A flow that ends (or is filtered) without a reply step answers 204 with no body."""
    state, url = sink
    async with make_sync(flows(url)) as (_, client):
        ran = await client.delete("/api/ping", params={"go": "yes"})
        filtered = await client.delete("/api/ping", params={"go": "no"})
    assert (ran.status_code, ran.content, filtered.status_code) == (204, b"", 204)
    assert len(state.requests) == 1


async def test_timeout_is_504(make_sync, sink):
    """A flow running longer than its timeout answers 504."""
    state, url = sink
    state.delay = 3.0
    async with make_sync(flows(url)) as (_, client):
        r = await client.get("/api/tickets/T-1")
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


async def test_cache_reuses_results_for_the_same_payload(make_sync, sink):
    """With cache: the same lookup calls the connector once; another payload calls again."""
    state, url = sink
    state.respond(200, {"subject": "s"})
    text = flows(url).replace("        as: ticket\n", "        as: ticket\n        cache: 30s\n")
    async with make_sync(text) as (_, client):
        for tid in ("T-1", "T-1", "T-2"):
            assert (await client.get(f"/api/tickets/{tid}")).status_code == 200
    assert [r.path for r in state.requests] == ["/tickets/T-1", "/tickets/T-2"]


async def test_long_throttle_wait_is_503(make_sync, sink):
    """Over the connector's rate, a sync call is not queued: 503 with the wait in Retry-After."""
    state, url = sink
    state.respond(200, {"subject": "s"})
    text = flows(url).replace("timeout: 2}\n", "timeout: 2}\n    rate: 1/min\n", 1)
    async with make_sync(text) as (_, client):
        first = await client.get("/api/tickets/T-1")
        second = await client.get("/api/tickets/T-2")
    assert first.status_code == 200
    assert (second.status_code, second.json()["error"]["code"]) == (503, "throttled")
    assert int(second.headers["retry-after"]) > 50
    assert len(state.requests) == 1
