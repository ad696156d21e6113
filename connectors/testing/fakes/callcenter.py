"""A fake cloud call center: sends signed events like one, and receives pushed events.

    sender = CallCenterSender(url=f"{base}/hooks/calls", secret=SANDBOX_SECRET)
    response = await sender.send("call.started", {...data...})

    state = CallCenterState()
    app = make_callcenter_app(state, secret=SANDBOX_SECRET)   # POST /events records verified events

The receiving app enforces what a call center's event endpoint would: a valid Standard Webhooks
signature (401 otherwise) and a JSON envelope with ``type`` (400 otherwise). Routes are
relative, so it works mounted under ``/sandbox/callcenter/``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bus.errors import VerificationError
from connectors import signing
from connectors.callcenter import sign_event

__all__ = ["SANDBOX_SECRET", "CallCenterSender", "CallCenterState", "make_callcenter_app", "sample_data"]

# The sandbox signing secret (not a real credential): whsec_ + base64 of 24 fixed bytes.
SANDBOX_SECRET = "whsec_c2FuZGJveC1jYWxsY2VudGVyLXNlY3JldCE="


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sample_data(kind: str, call_id: str = "call-0001") -> dict[str, Any]:
    """Valid ``data`` for each event type, for tests and demos."""
    start = "2024-05-01T09:30:00Z"
    samples: dict[str, dict[str, Any]] = {
        "call.started": {"call_id": call_id, "from": "+4915112345678", "to": "+498912345", "direction": "inbound",
                         "started_at": start, "queue": "returns"},
        "call.completed": {
            "call_id": call_id, "from": "+4915112345678", "to": "+498912345", "direction": "inbound",
            "started_at": start, "ended_at": "2024-05-01T09:34:10Z", "duration_s": 250, "disposition": "answered",
            "agent": {"id": "a-17", "name": "Dana"},
            "ivr": {"selections": [{"menu": "main", "key": "2", "label": "Returns"}], "intent": "return_item"},
            "customer": {"id": "c-42", "phone": "+4915112345678", "tier": "gold", "order_id": "A-1001"},
            "recording_url": f"https://recordings.example/{call_id}.mp3",
        },
        "transcript.segment": {"call_id": call_id, "segment_id": "s-1", "seq": 0, "speaker": "customer",
                               "text": "I want to return my order", "start_ms": 1200, "end_ms": 3100,
                               "is_final": True, "language": "en-US"},
        "recording.ready": {"call_id": call_id, "recording_url": f"https://recordings.example/{call_id}.mp3",
                            "duration_s": 250, "format": "mp3"},
    }
    return samples[kind]


@dataclass
class CallCenterSender:
    """Posts signed events to ``url`` as a call center would (one event per request)."""

    url: str
    secret: str = field(default=SANDBOX_SECRET, repr=False)
    sent: list[str] = field(default_factory=list)  # webhook-ids, in order

    async def send(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        msg_id: str | None = None,
        timestamp: int | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        """POST one signed ``{type, timestamp, data}`` envelope; returns the receiver's response."""
        envelope = {"type": kind, "timestamp": _now_iso(), "data": data}
        msg_id = msg_id or "msg_" + secrets.token_urlsafe(12)
        body, headers = sign_event(self.secret, envelope, msg_id=msg_id, timestamp=timestamp)
        self.sent.append(msg_id)
        if client is not None:
            return await client.post(self.url, content=body, headers=headers)
        async with httpx.AsyncClient() as own:
            return await own.post(self.url, content=body, headers=headers)


@dataclass
class CallCenterState:
    """Events the fake received (verified), and how many requests it refused."""

    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    refused: int = 0


def make_callcenter_app(state: CallCenterState, secret: str = SANDBOX_SECRET, tolerance: float = 300) -> Starlette:
    """An app that accepts signed events at ``POST events`` and records them in ``state``."""

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            signing.verify(secret, dict(request.headers), body, now=time.time(), tolerance=tolerance)
        except VerificationError as exc:
            state.refused += 1
            return JSONResponse({"error": "invalid_signature", "message": str(exc)}, status_code=401)
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError:
            state.refused += 1
            return JSONResponse({"error": "invalid_json", "message": "body is not JSON"}, status_code=400)
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            state.refused += 1
            return JSONResponse({"error": "invalid_event", "message": "missing string field 'type'"}, status_code=400)
        msg_id = request.headers[signing.WEBHOOK_ID]
        if msg_id not in state.ids:  # a retry of a delivered event is acknowledged, not stored twice
            state.ids.append(msg_id)
            state.events.append(envelope)
        return JSONResponse({"received": msg_id}, status_code=200)

    return Starlette(routes=[Route("/events", receive, methods=["POST"])])
