"""The ingress refuses bad input with a clear JSON error and loses nothing it accepted."""

from __future__ import annotations

import pytest

from bus.transport.base import MessageState
from tests.e2e.test_delivery import MAPPING, ORDER, flows, post_order, signed


@pytest.fixture
async def bus(make_bus, sink):
    state, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as b:
        b.sink = state
        yield b


async def test_bad_signature_is_401(bus):
    """A webhook whose signature does not match is refused with 401 and stores nothing."""
    body, headers = signed(ORDER)
    headers["webhook-signature"] = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    r = await bus.client.post("/hooks/vendor", content=body, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "signature_invalid"
    assert await bus.runtime.transport.backlog() == 0


@pytest.mark.parametrize(
    ("path", "code"),
    [("/hooks/nobody", "unknown_connector"), ("/flows/nothing", "unknown_flow")],
    ids=["connector", "flow"],
)
async def test_unknown_target_is_404(bus, path, code):
    """Posting to a connector or flow that does not exist answers 404 naming it."""
    r = await bus.client.post(path, json={})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == code


async def test_flow_entry_bad_json_is_400(bus):
    """A body that is not JSON answers 400 with the parser's complaint."""
    r = await bus.client.post("/flows/relay", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    assert "JSON" in r.json()["error"]["message"]


async def test_oversized_body_is_413_even_when_chunked(bus):
    """The body limit is counted on the stream: a chunked body with no Content-Length still gets 413."""

    async def chunks():
        for _ in range(300):
            yield b"x" * 1024

    r = await bus.client.post("/flows/relay", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["details"]["limit"] == 256 * 1024


async def test_flow_entry_runs_the_flow(bus):
    """POST /flows/{flow} puts the body straight into the flow."""
    r = await bus.client.post("/flows/relay", json=ORDER)
    assert r.status_code == 202
    (mid,) = r.json()["accepted"]
    assert await bus.wait_state(mid) == MessageState.DELIVERED
    assert bus.sink.requests[0].json["order"] == "A-1"


async def test_backlog_over_bound_is_503_with_retry_after(make_bus, sink):
    """Past the backlog bound the ingress answers 503 with Retry-After instead of growing."""
    state, url = sink
    state.down = True
    text = flows(url, retry="{attempts: 50, initial_delay: 1s, jitter: none}").replace(
        "  data_dir: ./data", "  data_dir: ./data\n  backlog_limit: 2"
    )
    async with make_bus(text, {"order_to_sink": MAPPING}) as bus:
        codes = [(await post_order(bus, msg_id=f"m{i}")).status_code for i in range(3)]
        assert codes == [202, 202, 503]
        r = await post_order(bus, msg_id="m9")
        assert r.headers["retry-after"].isdigit()
        assert r.json()["error"]["code"] == "backlog_full"


async def test_rate_limit_answers_429_with_retry_after(make_bus, sink):
    """Past the per-client, per-route limit the API answers 429 with Retry-After; health is exempt."""
    _, url = sink
    text = flows(url).replace("  data_dir: ./data", "  data_dir: ./data\n  http: {rate_limit: {rate: 1/min, burst: 2}}")
    async with make_bus(text, {"order_to_sink": MAPPING}) as bus:
        codes = [(await bus.client.get("/api/v1/flows")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await bus.client.get("/api/v1/flows")
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "rate_limited"
        assert (await bus.client.get("/api/v1/dlq")).status_code == 200  # another route, own bucket
        assert [(await bus.client.get("/healthz")).status_code for _ in range(5)] == [200] * 5


@pytest.mark.parametrize(
    ("rule", "headers", "status"),
    [
        ("{allow_ips: [10.0.0.0/8]}", {}, 403),
        ("{allow_ips: [127.0.0.0/8], api_key: 0123456789abcdef0123}", {}, 401),
        ("{api_key: 0123456789abcdef0123}", {"x-api-key": "0123456789abcdef0123"}, 202),
    ],
    ids=["ip-not-allowed", "api-key-missing", "api-key-ok"],
)
async def test_hook_ip_allow_list_and_api_key(make_bus, sink, rule, headers, status):
    """A hook can be limited to addresses and require an API key before the signature check."""
    _, url = sink
    text = flows(url).replace("    type: webhook\n", f"    type: webhook\n    ingress: {rule}\n", 1)
    async with make_bus(text, {"order_to_sink": MAPPING}) as bus:
        body, signed_headers = signed(ORDER, "evt-ingress")
        r = await bus.client.post("/hooks/vendor", content=body, headers={**signed_headers, **headers})
        assert r.status_code == status, r.text


XML_FLOWS = """
version: 1
settings: {data_dir: ./data, outbound: {allow: [127.0.0.1]}}
connectors:
  legacy: {type: webhook, settings: {format: xml}}
  sink: {type: http, settings: {base_url: "SINK"}}
flows:
  legacy_calls:
    from: {connector: legacy, event: received}
    steps:
      - to: sink.post
        map:
          fields:
            caller: body.call.caller
            queue: body.call.queue
"""


async def test_xml_body_is_parsed_safely(make_bus, sink):
    """An XML webhook becomes a message; an entity-expansion bomb is refused with 400."""
    state, url = sink
    async with make_bus(XML_FLOWS.replace("SINK", url)) as bus:
        xml = b'<?xml version="1.0"?><call><caller>+14155550100</caller><queue>billing</queue></call>'
        r = await bus.client.post("/hooks/legacy", content=xml, headers={"content-type": "application/xml"})
        assert r.status_code == 202, r.text
        (mid,) = r.json()["accepted"]
        assert await bus.wait_state(mid) == MessageState.DELIVERED
        bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
                b"<call><caller>&b;</caller></call>")
        r = await bus.client.post("/hooks/legacy", content=bomb, headers={"content-type": "application/xml"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payload"
    assert state.delivered[0].json == {"caller": "+14155550100", "queue": "billing"}


async def test_oversized_headers_are_431(bus):
    """A request with more than 16 KiB of headers is refused with 431 before any route runs."""
    r = await bus.client.post("/flows/relay", json=ORDER, headers={f"x-pad-{i}": "x" * 400 for i in range(50)})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert await bus.runtime.transport.backlog() == 0
