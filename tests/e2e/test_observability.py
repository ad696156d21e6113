"""/metrics and /api/v1/stats show the numbers produced by a known load."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bus.transport.base import MessageState
from tests.e2e.test_delivery import MAPPING, ORDER, flows


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample, read with Prometheus' own text parser (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_known_load_shows_in_metrics_and_stats(make_bus, sink):
    """Five messages, one of them dead: counters, histograms and the dashboard data agree."""
    state, url = sink
    state.fail_next(1, status=400, path="/orders")
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        ids = []
        for _ in range(5):
            ids += (await bus.client.post("/flows/relay", json=ORDER)).json()["accepted"]
        finals = [await bus.wait_state(mid) for mid in ids]
        assert finals.count(MessageState.DEAD) == 1
        text = (await bus.client.get("/metrics")).text
        stats = (await bus.client.get("/api/v1/stats")).json()

    assert metric(text, "tieline_flow_received_total", flow="relay") == 5
    assert metric(text, "tieline_flow_outcomes_total", flow="relay", outcome="delivered", variant="primary") == 4
    assert metric(text, "tieline_flow_outcomes_total", flow="relay", outcome="dead", variant="primary") == 1
    assert metric(text, "tieline_connector_calls_total", connector="sink", action="request", outcome="ok") == 4
    assert metric(text, "tieline_connector_calls_total", connector="sink", action="request", outcome="permanent") == 1
    assert metric(text, "tieline_dead_letters", flow="relay") == 1
    assert metric(text, "tieline_http_requests_total", route="/flows/{flow}", status="202") == 5
    assert metric(text, "tieline_flow_in_flight", flow="relay") == 0

    flow = stats["windows"]["5m"]["flows"]["relay"]
    assert (flow["ok"], flow["failed"], flow["success_rate"]) == (4, 1, 0.8)
    assert stats["windows"]["5m"]["connectors"]["sink"]["count"] == 5
    assert stats["dead_letters"]["relay"]["depth"] == 1


async def test_each_flows_concurrency_is_a_gauge_beside_in_flight(make_bus, sink):
    """An operator compares in_flight with it to see a flow held by its cap."""
    _, url = sink
    config = flows(url).replace("  relay:\n", "  relay:\n    concurrency: 5\n", 1)
    async with make_bus(config, {"order_to_sink": MAPPING}) as bus:
        text = (await bus.client.get("/metrics")).text
    assert metric(text, "tieline_flow_concurrency", flow="relay") == 5
