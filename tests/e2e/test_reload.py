"""Hot reload: invalid keeps the running config; valid swaps; in-flight work keeps its version."""

from __future__ import annotations

import asyncio

from bus.transport.base import MessageState
from tests.e2e.test_delivery import MAPPING, ORDER, flows

EXTRA_FLOW = """
  audit_copy:
    from: {topic: orders.audited}
    steps:
      - to: sink.request
        map:
          fields:
            method: {const: POST}
            path: {const: /audit}
            json: body
"""


async def test_invalid_reload_keeps_running_config_and_says_why(make_bus, sink, tmp_path):
    """A broken flows.yaml is refused with its file:line errors; the bus keeps working."""
    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        version = bus.runtime.flows["relay"].version
        (tmp_path / "flows.yaml").write_text(flows(url).replace("to: sink.request", "to: sink.requets"))
        r = await bus.client.post("/api/v1/reload")
        assert r.status_code == 422
        errors = r.json()["error"]["details"]["errors"]
        assert any("flows.yaml:" in e and "requets" in e for e in errors)
        assert bus.runtime.flows["relay"].version == version
        (mid,) = (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED


async def test_valid_reload_swaps_mapping_and_adds_flows(make_bus, sink, tmp_path):
    """A changed mapping takes effect for new messages, with a new flow version; a new flow runs."""
    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        old = bus.runtime.flows["relay"].version
        (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING + "  source: {const: v2}\n")
        (tmp_path / "flows.yaml").write_text(flows(url) + EXTRA_FLOW)
        r = await bus.client.post("/api/v1/reload")
        assert r.status_code == 200, r.text
        plan = r.json()["plan"]
        assert plan["changed"] == ["relay"] and plan["added"] == ["audit_copy"]
        assert bus.runtime.flows["relay"].version != old
        (mid,) = (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        rec = await bus.runtime.transport.message(mid)
        assert rec.envelope.flow_version == bus.runtime.flows["relay"].version
        assert state.delivered[-1].json["source"] == "v2"
        (mid2,) = (await bus.client.post("/flows/audit_copy", json={"n": 1})).json()["accepted"]
        assert await bus.wait_state(mid2) == MessageState.DELIVERED


async def test_message_under_way_finishes_on_its_version(make_bus, sink, tmp_path):
    """A message waiting for a retry when the flow changes finishes on the version it started with."""
    state, url = sink
    state.fail_next(1, status=503, path="/orders")
    slow = flows(url, retry="{attempts: 5, initial_delay: 500ms, jitter: none}")
    async with make_bus(slow, {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
        for _ in range(100):  # wait for the first (failed) attempt
            if state.requests:
                break
            await asyncio.sleep(0.02)
        old = bus.runtime.flows["relay"].version
        (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING + "  source: {const: v2}\n")
        assert (await bus.client.post("/api/v1/reload")).status_code == 200
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        assert "source" not in state.delivered[-1].json  # ran on the old mapping
        assert (await bus.runtime.transport.message(mid)).envelope.flow_version == old


async def _versions(url: str) -> dict[str, str]:
    import httpx

    async with httpx.AsyncClient() as c:
        return {f["name"]: f["version"] for f in (await c.get(url + "/api/v1/flows")).json()["flows"]}


async def _until_changed(url: str, before: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
    for _ in range(int(timeout / 0.1)):
        now = await _versions(url)
        if now != before:
            return now
        await asyncio.sleep(0.1)
    raise AssertionError("the running bus did not reload")


async def test_watch_and_sighup_reload_a_running_bus(tmp_path, sink):
    """`tieline run --watch` reloads when a mapping file changes; SIGHUP reloads too."""
    import signal

    from tests.e2e.test_crash import free_port, start_server, wait_healthy

    _, url = sink
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING)
    (tmp_path / "flows.yaml").write_text(flows(url))
    port = free_port()
    proc = start_server(tmp_path / "flows.yaml", port, "--watch")
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(base, proc)
        before = await _versions(base)
        (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING + "  source: {const: watch}\n")
        after = await _until_changed(base, before)
        assert after["relay"] != before["relay"]
        (tmp_path / "flows.yaml").write_text(flows(url) + EXTRA_FLOW)
        proc.send_signal(signal.SIGHUP)
        final = await _until_changed(base, after)
        assert "audit_copy" in final
    finally:
        proc.terminate()
        proc.wait(10)


SYNC_FLOW = """
  order_status:
    from: {http: "GET /api/orders/{id}"}
    steps:
      - reply:
          map:
            fields:
              id: body.params.id
              state: {const: known}
"""


async def test_reload_adds_a_sync_route(make_bus, sink, tmp_path):
    """A sync API flow added by a reload is served at once; removing it retires the route."""
    _, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        assert (await bus.client.get("/api/orders/7")).status_code == 404
        (tmp_path / "flows.yaml").write_text(flows(url) + SYNC_FLOW)
        assert (await bus.client.post("/api/v1/reload")).status_code == 200
        r = await bus.client.get("/api/orders/7")
        assert r.status_code == 200 and r.json() == {"id": "7", "state": "known"}
        (tmp_path / "flows.yaml").write_text(flows(url))
        assert (await bus.client.post("/api/v1/reload")).status_code == 200
        assert (await bus.client.get("/api/orders/7")).status_code == 404
