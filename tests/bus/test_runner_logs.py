"""Runner log events carry the fields operators filter on, and never message bodies."""

from __future__ import annotations

from structlog.testing import capture_logs

from bus.transport.base import MessageState
from tests.e2e.test_delivery import MAPPING, ORDER, flows


async def test_retry_log_names_message_flow_version_step_connector(make_bus, sink):
    """A retry_scheduled event has message, correlation, flow, version, step, attempt, connector, action."""
    state, url = sink
    state.fail_next(1, status=503, path="/orders")
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        with capture_logs() as logs:
            (mid,) = (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
            assert await bus.wait_state(mid) == MessageState.DELIVERED
        version = bus.runtime.flows["relay"].version
    (event,) = [e for e in logs if e["event"] == "retry_scheduled"]
    assert {k: event[k] for k in ("message_id", "flow", "flow_version", "step", "attempt", "connector", "action")} == {
        "message_id": mid, "flow": "relay", "flow_version": version, "step": "steps[1] to: sink.request",
        "attempt": 1, "connector": "sink", "action": "request"}
    assert event["correlation_id"] == mid
    assert all("A-1" not in str(e) for e in logs)  # the order id (a body value) is not logged
