"""End to end on loopback: webhook in → flow → delivered to a fake HTTP sink, with retries and DLQ."""

from __future__ import annotations

import json
import time
from datetime import UTC

from standardwebhooks.webhooks import Webhook

from bus.transport.base import MessageState
from tests.conftest import SECRET


def flows(sink_url: str, *, extra_steps: str = "", retry: str = "") -> str:
    return f"""
version: 1
settings:
  data_dir: ./data
  outbound: {{allow: [127.0.0.1]}}  # the test sink is on loopback
connectors:
  vendor:
    type: webhook
    settings: {{verify: standard, secret: "{SECRET}", event_field: type, events: [order.created]}}
  sink:
    type: http
    settings: {{base_url: "{sink_url}", timeout: 2}}
flows:
  relay:
    from: {{connector: vendor, event: order.created}}
    retry: {retry or "{attempts: 4, initial_delay: 20ms, multiplier: 2, max_delay: 100ms, jitter: none}"}
    steps:
      - map: order_to_sink
      - to: sink.request
        map:
          fields:
            method: {{const: POST}}
            path: {{const: /orders}}
            json: body
        as: first
{extra_steps}
"""


MAPPING = """
fields:
  order: body.data.id
  phone: "e164(body.data.phone, 'US')"
  total: {expr: body.data.total, default: 0}
"""


def signed(payload: dict, msg_id: str = "msg_1") -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    ts = int(time.time())
    from datetime import datetime

    sig = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sig,
        "content-type": "application/json",
    }
    return body, headers


ORDER = {"type": "order.created", "data": {"id": "A-1", "phone": "(415) 555-0100", "total": 12}}


async def post_order(bus, payload=ORDER, msg_id="msg_1"):
    body, headers = signed(payload, msg_id)
    return await bus.client.post("/hooks/vendor", content=body, headers=headers)


async def test_webhook_is_mapped_and_delivered(make_bus, sink):
    """A signed webhook is accepted with 202, mapped, and delivered to the sink."""
    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        r = await post_order(bus)
        assert r.status_code == 202, r.text
        (mid,) = r.json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
    assert [req.json for req in state.requests] == [{"order": "A-1", "phone": "+14155550100", "total": 12}]
    key = state.requests[0].headers["idempotency-key"]
    assert key.endswith("-1") and len(key) == 28  # derived from the vendor event, step 1


async def test_two_503s_then_200_delivers_on_attempt_3(make_bus, sink):
    """A sink failing twice with 503 is called exactly three times and the message is delivered."""
    state, url = sink
    state.fail_next(2, status=503)
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await post_order(bus)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        history = await bus.runtime.transport.history(mid)
    assert len(state.requests) == 3
    to_steps = [e for e in history if e.kind == "step" and "to:" in (e.step or "")]
    assert [(e.attempt, e.outcome) for e in to_steps] == [(1, "retry"), (2, "retry"), (3, "ok")]


async def test_sink_400_dead_letters_at_once(make_bus, sink):
    """A permanent 400 goes to the dead-letter queue on the first attempt, with the sink's error."""
    state, url = sink
    state.fail_next(1, status=400, json={"error": "order total must be positive"})
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await post_order(bus)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DEAD
        dl = await bus.runtime.transport.dead_letter(mid)
    assert len(state.requests) == 1
    assert "400" in dl.error and "order total must be positive" in dl.error
    assert dl.step == "steps[1] to: sink.request"


async def test_sink_down_dead_letter_then_replay_delivers_once(make_bus, sink):
    """Retries exhaust while the sink is down; after it is back, a replay delivers exactly once."""
    state, url = sink
    state.down = True
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await post_order(bus)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DEAD
        assert len(state.requests) == 4  # attempts: 4
        state.down = False
        r = await bus.client.post(f"/api/v1/dlq/{mid}/replay")
        assert r.status_code == 200, r.text
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        assert await bus.runtime.transport.dead_letter(mid) is None
    assert len(state.delivered) == 1


async def test_second_to_failing_does_not_repeat_the_first(make_bus, sink):
    """When the second of two to: calls fails, the retry resumes there: the first runs once."""
    state, url = sink
    second = """      - to: sink.request
        map:
          fields:
            method: {const: POST}
            path: {const: /audit}
            json.first_n: context.first.n
"""
    state.fail_next(2, status=503, path="/audit")
    async with make_bus(flows(url, extra_steps=second), {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await post_order(bus)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
    paths = [r.path for r in state.requests]
    assert paths.count("/orders") == 1
    assert paths.count("/audit") == 3
    assert state.delivered[-1].json == {"first_n": 1}


async def test_duplicate_vendor_event_processed_once(make_bus, sink):
    """The same webhook-id twice: the second answers 200 naming the first message, nothing runs twice."""
    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        first = await post_order(bus, msg_id="evt_42")
        second = await post_order(bus, msg_id="evt_42")
        assert first.status_code == 202 and second.status_code == 200
        (mid,) = first.json()["accepted"]
        assert second.json()["events"][0]["duplicate_of"] == [mid]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
    assert len(state.requests) == 1


async def test_dead_letter_disabled_drops_but_keeps_history(make_bus, sink):
    """With dead_letter.enabled false a failed message is not kept for replay; its history is."""
    state, url = sink
    state.fail_next(1, status=400)
    text = flows(url).replace("    steps:\n", "    dead_letter: {enabled: false}\n    steps:\n", 1)
    async with make_bus(text, {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await post_order(bus)).json()["accepted"]
        assert await bus.wait_state(mid, states={MessageState.PURGED}) == MessageState.PURGED
        assert await bus.runtime.transport.dead_letters() == []
        kinds = [e.kind for e in await bus.runtime.transport.history(mid)]
    assert kinds[-2:] == ["dead", "purged"]


async def test_traceparent_travels_from_ingress_to_outbound_call(make_bus, sink):
    """A W3C traceparent received on ingress is sent on the outbound call for that message."""
    state, url = sink
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        body, headers = signed(ORDER, "evt_tp")
        r = await bus.client.post("/hooks/vendor", content=body, headers={**headers, "traceparent": tp})
        (mid,) = r.json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
    assert state.delivered[0].headers["traceparent"] == tp


async def test_private_target_not_allow_listed_is_refused_at_connect(make_bus, sink):
    """Without outbound.allow, a call to a loopback sink is refused before connecting (SSRF
    guard) and dead-lettered at once with the reason; the sink never sees a request."""
    state, url = sink
    text = flows(url).replace("  outbound: {allow: [127.0.0.1]}  # the test sink is on loopback\n", "")
    async with make_bus(text, {"order_to_sink": MAPPING}) as bus:
        (mid,) = (await post_order(bus)).json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DEAD
        dl = await bus.runtime.transport.dead_letter(mid)
    assert state.requests == []
    assert "127.0.0.1" in dl.error and "PermanentError" in dl.error_chain[0]


async def test_two_copies_of_one_vendor_event_send_one_idempotency_key(make_bus, sink):
    """Two messages made from the same vendor event (an ambiguous publish plus the vendor's retry)
    call the sink with the same Idempotency-Key, so a sink that honours it acts once."""
    from connectors.base import InboundEvent

    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        event = InboundEvent("order.created", ORDER, dedupe_key="evt-twice")
        first = await bus.runtime.ingress.admit("vendor", event)
        # The same event admitted again under a different dedupe scope: a second message id.
        again = await bus.runtime.ingress.admit("vendor", InboundEvent("order.created", ORDER, "evt-twice"))
        assert again.duplicate_of == first.accepted  # the dedupe window catches the usual case
        copy = (await bus.runtime.transport.message(first.accepted[0])).envelope
        clone = copy.evolve(id="01ZZZZZZZZZZZZZZZZZZZZZZZZ", cursor=0)
        await bus.runtime.transport.publish([clone])
        for mid in (first.accepted[0], clone.id):
            assert await bus.wait_state(mid) == MessageState.DELIVERED
    keys = [r.headers["idempotency-key"] for r in state.requests]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(state.delivered) == 1 and state.duplicates == 1

