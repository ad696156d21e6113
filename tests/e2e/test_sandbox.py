"""The shipped flows.yaml on the built-in vendor sandbox: scenario 1 (returns) end to end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

from connectors.callcenter import sign_event

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_ENV = {
    "TIELINE_DATA_DIR": "./data",
    "TIELINE_PUBLIC_URL": "{BUS_URL}",
    "ZENDESK_URL": "{BUS_URL}/sandbox/zendesk",
    "KANNEL_URL": "{BUS_URL}/sandbox/kannel",
    "AFTERSHIP_URL": "{BUS_URL}/sandbox/aftership",
    "SERVICE_PLATFORM_URL": "{BUS_URL}/sandbox/platform/events",
}
CALLCENTER_SECRET = "whsec_c2FuZGJveC1jYWxsY2VudGVyLXNlY3JldCE="


def shipped() -> tuple[str, dict[str, str]]:
    mappings = {p.stem: p.read_text() for p in (ROOT / "mappings").glob("*.yaml")}
    return (ROOT / "flows.yaml").read_text(), mappings


async def until(predicate, timeout: float = 10.0):
    """Poll ``predicate`` (an async callable) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def call_completed(tier: str) -> dict:
    return {
        "type": "call.completed",
        "timestamp": "2026-11-25T10:00:00Z",
        "data": {
            "call_id": "CA-77", "from": "+14155550100", "to": "+18005550199", "direction": "inbound",
            "started_at": "2026-11-25T09:55:00Z", "ended_at": "2026-11-25T10:00:00Z", "duration_s": 300,
            "disposition": "answered",
            "ivr": {"selections": [{"menu": "main", "key": "3", "label": "Returns"}], "intent": "return"},
            "customer": {"id": "C-9", "phone": "(415) 555-0100", "tier": tier, "order_id": "O-1"},
        },
    }


def carrier_update(tag: str) -> tuple[bytes, dict[str, str]]:
    payload = {
        "event_id": f"evt-{tag}", "event": "tracking_update", "ts": int(time.time()),
        "msg": {"id": "trk-1", "tracking_number": "1Z999", "slug": "ups", "tag": tag,
                "subtag": f"{tag}_001", "order_id": "O-1",
                "customers": [{"role": "buyer", "phone_number": "+14155550100"}]},
    }
    body = json.dumps(payload).encode()
    digest = hmac.new(b"sandbox-webhook-secret", body, hashlib.sha256).digest()
    return body, {"content-type": "application/json", "aftership-hmac-sha256": base64.b64encode(digest).decode()}


async def test_return_call_ticket_then_parcel_update_and_sms(make_bus):
    """A VIP return call opens an urgent VIP ticket and notifies the platform; the parcel's
    delivery comments on the ticket, solves it and texts the customer."""
    flows, mappings = shipped()
    async with make_bus(flows, mappings, env=SANDBOX_ENV) as bus:
        body, headers = sign_event(CALLCENTER_SECRET, call_completed("vip"))
        r = await bus.client.post("/hooks/callcenter", content=body, headers=headers)
        assert r.status_code == 202, r.text

        async def platform_told():
            box = (await bus.client.get("/sandbox")).json()
            return box if box["platform"]["received"] else None

        box = await until(platform_told)
        (ticket,) = box["zendesk"]["tickets"].values()
        assert (ticket["priority"], ticket["group_id"], ticket["external_id"]) == ("urgent", 360000000001, "return-O-1")
        (notice,) = box["platform"]["received"]
        assert notice["json"]["type"] == "return.ticket_opened"
        assert notice["json"]["ticket"]["id"] == ticket["id"]

        body, headers = carrier_update("Delivered")
        r = await bus.client.post("/hooks/carrier", content=body, headers=headers)
        assert r.status_code == 202, r.text

        async def texted():
            box = (await bus.client.get("/sandbox")).json()
            return box if box["kannel"]["sent"] else None

        box = await until(texted)
    (sms,) = box["kannel"]["sent"]
    assert sms["receiver"] == "+14155550100" and "1Z999" in sms["text"] and "Delivered" in sms["text"]
    (ticket,) = box["zendesk"]["tickets"].values()
    assert ticket["status"] == "solved"
    comments = box["zendesk"]["comments"][str(ticket["id"])]
    assert any("1Z999" in c["body"] and c["public"] is False for c in comments)


async def test_normal_customer_gets_a_normal_ticket(make_bus):
    """The same call from a regular customer opens a normal-priority ticket with no VIP group."""
    flows, mappings = shipped()
    async with make_bus(flows, mappings, env=SANDBOX_ENV) as bus:
        body, headers = sign_event(CALLCENTER_SECRET, call_completed("standard"))
        assert (await bus.client.post("/hooks/callcenter", content=body, headers=headers)).status_code == 202

        async def ticket():
            tickets = (await bus.client.get("/sandbox")).json()["zendesk"]["tickets"]
            return list(tickets.values())

        (t,) = await until(ticket)
    assert t["priority"] == "normal" and t.get("group_id") is None
