"""Reference scenarios 2 (finance risk) and 3 (government hotline) on the shipped flows + sandbox."""

from __future__ import annotations

import asyncio
import datetime
import json

from standardwebhooks.webhooks import Webhook

from connectors.callcenter import sign_event
from tests.e2e.test_sandbox import CALLCENTER_SECRET, SANDBOX_ENV, call_completed, shipped, until

RISK_SECRET = "whsec_cmlzay1zeXN0ZW0tc2FuZGJveC1zZWNyZXQ="
ENV = {**SANDBOX_ENV, "RT_URL": "{BUS_URL}/sandbox/rt/REST/2.0", "RISK_SYSTEM_URL": "{BUS_URL}/sandbox/risk/events"}


def segment(call_id: str, seq: int, text: str) -> dict:
    return {"type": "transcript.segment", "timestamp": "2026-11-25T10:00:00Z",
            "data": {"call_id": call_id, "segment_id": f"{call_id}-{seq}", "seq": seq, "speaker": "customer",
                     "text": text, "start_ms": seq * 1000, "end_ms": seq * 1000 + 900, "is_final": True}}


async def post_signed(bus, path: str, payload: dict, secret: str) -> None:
    body, headers = sign_event(secret, payload)
    r = await bus.client.post(path, content=body, headers=headers)
    assert r.status_code in (200, 202), r.text


async def sandbox(bus) -> dict:
    return (await bus.client.get("/sandbox")).json()


async def test_risk_keywords_raise_one_warning_ticket_per_call(make_bus):
    """Several risky segments of one call make one high-priority risk ticket and one review request;
    the risk system's verdict reaches the platform and the ticket."""
    flows, mappings = shipped()
    async with make_bus(flows, mappings, env=ENV) as bus:
        for seq, text in enumerate(["hello there", "I think this is fraud", "my lawyer will call, fraud!"]):
            await post_signed(bus, "/hooks/callcenter", segment("CA-9", seq, text), CALLCENTER_SECRET)
        await post_signed(bus, "/hooks/callcenter", segment("CA-10", 0, "thanks, all good"), CALLCENTER_SECRET)

        box = await until(lambda: _when(sandbox(bus), lambda b: b["risk"]["received"]))
        await asyncio.sleep(0.5)  # give a (wrong) second ticket time to appear
        box = await sandbox(bus)
        tickets = list(box["zendesk"]["tickets"].values())
        assert len(tickets) == 1
        (t,) = tickets
        assert (t["priority"], t["group_id"], t["external_id"]) == ("high", 360000000002, "risk-CA-9")
        (review,) = box["risk"]["received"]
        assert review["json"]["ticket_id"] == t["id"] and review["json"]["matched"] == ["fraud"]

        verdict = {"type": "risk.assessed", "call_id": "CA-9", "ticket_id": t["id"], "verdict": "suspicious", "score": 0.91}
        body, now = json.dumps(verdict), datetime.datetime.now(tz=datetime.UTC)
        headers = {"webhook-id": "risk-1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(RISK_SECRET).sign("risk-1", now, body),
                   "content-type": "application/json"}
        r = await bus.client.post("/hooks/risk_system", content=body, headers=headers)
        assert r.status_code == 202, r.text
        box = await until(lambda: _when(sandbox(bus), lambda b: any(
            n["json"]["type"] == "risk.result" for n in b["platform"]["received"])))
    result = next(n["json"] for n in box["platform"]["received"] if n["json"]["type"] == "risk.result")
    assert (result["call_id"], result["verdict"], result["ticket_id"]) == ("CA-9", "suspicious", t["id"])


async def _when(coro, predicate):
    value = await coro
    return value if predicate(value) else None


def fast_sla(mappings: dict[str, str]) -> dict[str, str]:
    """The hotline rules with a 1-second SLA for housing (the SLA is configuration)."""
    out = dict(mappings)
    out["hotline_route"] = mappings["hotline_route"].replace("sla_seconds: 172800", "sla_seconds: 1")
    return out


def hotline_call(call_id: str, category: str) -> dict:
    payload = call_completed("standard")
    payload["data"]["call_id"] = call_id
    payload["data"]["ivr"] = {"selections": [{"menu": "main", "key": "2", "label": "Housing"}], "category": category}
    return payload


async def test_hotline_ticket_escalates_after_sla_unless_resolved(make_bus):
    """An unresolved housing ticket is escalated to the supervisor with an SMS to its owner after the
    SLA; a ticket resolved in time is left alone."""
    flows, mappings = shipped()
    async with make_bus(flows, fast_sla(mappings), env=ENV) as bus:
        await post_signed(bus, "/hooks/callcenter", hotline_call("CA-H1", "housing"), CALLCENTER_SECRET)
        await post_signed(bus, "/hooks/callcenter", hotline_call("CA-H2", "housing"), CALLCENTER_SECRET)
        box = await until(lambda: _when(sandbox(bus), lambda b: len(b["rt"]["tickets"]) == 2))
        resolved = next(t for t in box["rt"]["tickets"].values() if "CA-H2" in t["Subject"])
        r = await bus.client.put(f"/sandbox/rt/REST/2.0/ticket/{resolved['id']}",
                                 json={"Status": "resolved"},
                                 headers={"authorization": "token 1-14-sandboxrttoken"})
        assert r.status_code == 200, r.text
        box = await until(lambda: _when(sandbox(bus), lambda b: b["kannel"]["sent"]), timeout=15)
        await asyncio.sleep(1.0)  # the resolved ticket's check is due too; it must not escalate
        box = await sandbox(bus)
    tickets = {t["Subject"].split()[2].rstrip(":"): t for t in box["rt"]["tickets"].values()}
    open_one, done = tickets["CA-H1"], tickets["CA-H2"]
    assert open_one["Queue"] in ("Housing", 2) and (open_one["Priority"], open_one["Owner"]) == (90, "housing.lead")
    assert done["Status"] == "resolved" and done["Owner"] == "housing.desk" and done["Priority"] == 50
    (sms,) = box["kannel"]["sent"]
    assert sms["receiver"] == "+14155550101" and f"#{open_one['id']}" in sms["text"]
