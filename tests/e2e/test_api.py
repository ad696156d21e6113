"""The management API: flows, connectors, ledger search, dead letters by filter, the audit log."""

from __future__ import annotations

import time

import pytest

from bus.transport.base import MessageState
from tests.e2e.test_delivery import MAPPING, ORDER, flows


@pytest.fixture
async def bus(make_bus, sink):
    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as b:
        b.sink = state
        yield b


async def send(bus, n: int = 1) -> list[str]:
    ids = []
    for _ in range(n):
        ids += (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
    for mid in ids:
        await bus.wait_state(mid)
    return ids


async def test_flow_show_names_version_location_and_steps(bus):
    """GET /api/v1/flows/{name} shows the version, the YAML location and the compiled steps."""
    r = (await bus.client.get("/api/v1/flows/relay")).json()
    assert r["version"] == bus.runtime.flows["relay"].version
    assert r["location"].endswith("flows.yaml:14:3")
    assert r["steps"] == ["steps[0] map: order_to_sink", "steps[1] to: sink.request"]
    assert (await bus.client.get("/api/v1/flows/nope")).status_code == 404


async def test_disabled_flow_refuses_new_messages_until_enabled(bus):
    """A disabled flow answers 409 on direct entry; enabling it again accepts; both are audited."""
    assert (await bus.client.post("/api/v1/flows/relay/disable")).json()["enabled"] is False
    r = await bus.client.post("/flows/relay", json=ORDER)
    assert r.status_code == 409 and r.json()["error"]["code"] == "flow_disabled"
    await bus.client.post("/api/v1/flows/relay/enable")
    assert (await bus.client.post("/flows/relay", json=ORDER)).status_code == 202
    audit = (await bus.client.get("/api/v1/audit")).json()["audit"]
    assert [a["action"] for a in audit[:2]] == ["enable", "disable"]


async def test_connectors_listed_with_health(bus):
    """GET /api/v1/connectors lists each connector with its type, actions and health."""
    got = {c["name"]: c for c in (await bus.client.get("/api/v1/connectors")).json()["connectors"]}
    assert got["sink"]["type"] == "http" and "request" in got["sink"]["actions"]
    assert "status" in got["sink"]["health"]


@pytest.mark.parametrize(
    ("query", "code"),
    [("state=lost", "invalid_parameter"), ("since=yesterday", "invalid_parameter"), ("limit=0", "invalid_parameter")],
    ids=["state", "since", "limit"],
)
async def test_bad_search_parameters_are_400(bus, query, code):
    """Bad query parameters get a 400 that names the parameter, never a 500."""
    r = await bus.client.get(f"/api/v1/messages?{query}")
    assert r.status_code == 400 and r.json()["error"]["code"] == code


async def test_search_by_flow_state_and_time(bus):
    """The ledger can be searched by flow, state and time range."""
    t0 = time.time()
    ids = await send(bus, 2)
    found = (await bus.client.get(f"/api/v1/messages?flow=relay&state=delivered&since={t0 - 1}")).json()
    assert {m["id"] for m in found["messages"]} == set(ids)
    none = (await bus.client.get(f"/api/v1/messages?until={t0 - 3600}")).json()
    assert none["messages"] == []


async def test_replay_by_time_range_and_purge_are_audited(bus):
    """Dead letters replay by time range and purge by flow; the audit log says who, what and how many."""
    bus.sink.fail_next(3, status=400, path="/orders")
    dead = await send(bus, 3)
    assert [(await bus.runtime.transport.message(m)).state for m in dead] == [MessageState.DEAD] * 3
    # The three are delivered concurrently, so they may die in any order: replay the last to die.
    letters = [await bus.runtime.transport.dead_letter(m) for m in dead]
    last = max(letters, key=lambda dl: dl.dead_at)
    r = await bus.client.post("/api/v1/dlq/replay", json={"flow": "relay", "since": last.dead_at})
    latest = [dl.message_id for dl in letters if dl.dead_at >= last.dead_at]  # ties: all of them
    assert sorted(r.json()["replayed"]) == sorted(latest) and len(latest) < 3
    assert await bus.wait_state(last.message_id) == MessageState.DELIVERED
    r = await bus.client.post("/api/v1/dlq/purge", json={"flow": "relay"})
    assert r.json()["purged"] == 3 - len(latest)
    bad = await bus.client.post("/api/v1/dlq/purge", json={})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "needs_selection"
    audit = (await bus.client.get("/api/v1/audit")).json()["audit"]
    assert [(a["action"], a["count"]) for a in audit[:2]] == [("purge", 2), ("replay", 1)]
    assert audit[0]["actor"].startswith("anonymous")
