"""Split, durable timers, canary routing, throttling and circuit breaking on a whole bus."""

from __future__ import annotations

import asyncio

from bus.canary import share
from bus.transport.base import MessageState


def bus_yaml(sink_url: str, flows: str, connector_extra: str = "") -> str:
    return f"""
version: 1
settings: {{data_dir: ./data, outbound: {{allow: [127.0.0.1]}}}}
connectors:
  sink:
    type: http
    settings: {{base_url: "{sink_url}", timeout: 2}}
{connector_extra}
flows:
{flows}"""


def to_sink(path: str, json: str = "body") -> str:
    return (f"      - to: sink.request\n        map: {{fields: {{method: {{const: POST}}, "
            f"path: {{const: {path}}}, json: {json}}}}}\n")


async def post(bus, flow: str, body) -> str:
    r = await bus.client.post(f"/flows/{flow}", json=body)
    assert r.status_code == 202, r.text
    return r.json()["accepted"][0]


async def test_split_continues_each_item_at_the_next_step(make_bus, sink):
    """split: the parent ends as 'split into 3'; each item runs the rest of the flow on its own."""
    state, url = sink
    flows = ("  batch:\n    from: {topic: batch}\n    steps:\n      - split: body.items\n"
             + to_sink("/item", "body.sku, json.i: headers.split_index, "
                       "json.n: headers.split_count").replace("json: body.sku", "json.sku: body.sku"))
    async with make_bus(bus_yaml(url, flows)) as bus:
        mid = await post(bus, "batch", {"items": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]})
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        await state.wait_delivered(3)
        delivered = [e for e in await bus.runtime.transport.history(mid) if e.kind == "delivered"]
        family = await bus.runtime.transport.search(correlation_id=mid)
    assert delivered[0].detail["note"] == "split into 3"
    assert sorted((r.json["sku"], r.json["i"], r.json["n"]) for r in state.delivered) == [
        ("a", "0", "3"), ("b", "1", "3"), ("c", "2", "3")]
    assert len({r.envelope.id for r in family}) == 4  # parent + 3 children, one correlation


async def test_delayed_publish_survives_a_restart(make_bus, sink):
    """A message published with a delay runs when due, even across a stop and a new runtime."""
    state, url = sink
    flows = ("  start:\n    from: {topic: kick}\n    steps:\n"
             "      - publish: later\n        delay_expr: body.wait\n"
             "  later:\n    from: {topic: later}\n    steps:\n" + to_sink("/later"))
    text = bus_yaml(url, flows)
    async with make_bus(text) as bus:
        mid = await post(bus, "start", {"wait": "1s", "n": 1})
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        (child,) = await bus.runtime.transport.search(flow="later")
        assert child.state == MessageState.QUEUED and child.available_at > child.updated_at + 0.5
    assert state.requests == []  # the first runtime stopped before it was due
    async with make_bus(text) as bus:
        assert await bus.wait_state(child.envelope.id) == MessageState.DELIVERED
    assert [r.json for r in state.delivered] == [{"wait": "1s", "n": 1}]


async def test_canary_takes_a_deterministic_share(make_bus, sink):
    """A canary at 50% sends exactly the customers whose key hashes under 50 to the canary flow."""
    state, url = sink
    flows = ("  feed:\n    from: {topic: kick}\n    steps: [{publish: orders}]\n"
             "  v1:\n    from: {topic: orders}\n"
             "    canary: {flow: v2, percent: 50, key: body.customer}\n    steps:\n"
             + to_sink("/v1") +
             "  v2:\n    from: {topic: orders}\n    steps:\n" + to_sink("/v2"))
    customers = [f"c{i}" for i in range(12)]
    async with make_bus(bus_yaml(url, flows)) as bus:
        for c in customers:
            await post(bus, "feed", {"customer": c})
        await state.wait_delivered(len(customers))
        variants = {r.envelope.body["customer"]: (r.envelope.flow, r.envelope.headers["variant"])
                    for r in await bus.runtime.transport.search(limit=100)
                    if r.envelope.flow in ("v1", "v2")}
    expected = {c: ("v2", "canary") if share(c) < 50 else ("v1", "primary") for c in customers}
    assert variants == expected
    assert {r.json["customer"]: r.path for r in state.delivered} == {
        c: f"/{flow}" for c, (flow, _) in expected.items()}
    assert 0 < sum(f == "v2" for f, _ in expected.values()) < len(customers)  # both variants seen


async def test_throttled_message_waits_without_using_an_attempt(make_bus, sink):
    """Over the rate, a message is rescheduled ('throttled') with its attempt unchanged."""
    state, url = sink
    flows = "  relay:\n    from: {topic: relay}\n    steps:\n" + to_sink("/r")
    async with make_bus(bus_yaml(url, flows, "    rate: 1/h\n")) as bus:
        first = await post(bus, "relay", {"n": 1})
        assert await bus.wait_state(first) == MessageState.DELIVERED
        second = await post(bus, "relay", {"n": 2})
        for _ in range(200):
            history = await bus.runtime.transport.history(second)
            if any(e.outcome == "throttled" for e in history):
                break
            await asyncio.sleep(0.02)
        record = await bus.runtime.transport.message(second)
    (held,) = [e for e in history if e.outcome == "throttled"]
    assert held.attempt == 1 and held.detail["delay"] > 3000
    assert record.state == MessageState.QUEUED and record.envelope.attempt == 1
    assert len(state.requests) == 1


async def test_circuit_opens_then_a_probe_closes_it(make_bus, sink):
    """Failures open the circuit (calls stop, attempts kept); after the cool-down a probe succeeds."""
    state, url = sink
    state.down = True
    flows = ("  relay:\n    from: {topic: relay}\n"
             "    retry: {attempts: 20, initial_delay: 10ms, max_delay: 10ms, jitter: none}\n"
             "    steps:\n" + to_sink("/r"))
    breaker = ("    circuit_breaker: {failure_ratio: 0.5, window: 30s, min_calls: 2, "
               "cooldown: 500ms}\n")
    async with make_bus(bus_yaml(url, flows, breaker)) as bus:
        mid = await post(bus, "relay", {"n": 1})
        for _ in range(250):
            history = await bus.runtime.transport.history(mid)
            if any(e.outcome == "circuit_open" for e in history):
                break
            await asyncio.sleep(0.02)
        cb = bus.runtime.runner.calls.breakers.by_connector["sink"]
        assert cb.state == "open"
        state.down = False
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        history = await bus.runtime.transport.history(mid)
        assert cb.state == "closed"
    assert len(state.requests) == 3  # two failures, then the probe: nothing while open
    steps = [(e.attempt, e.outcome) for e in history if e.kind == "step"]
    assert steps[:3] == [(1, "retry"), (2, "retry"), (3, "circuit_open")]
    assert steps[-1] == (3, "ok")
