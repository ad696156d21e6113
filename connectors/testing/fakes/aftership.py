"""A fake AfterShip Tracking API (2025-07): trackings endpoints with auth, and signed webhooks.

    state = AfterShipState()                       # sandbox key / webhook secret below
    app = make_aftership_app(state)                # serve it; base_url = f"{url}" (no version prefix)
    body, headers = state.webhook(tracking_id, "Delivered", "Delivered_001")
    await state.push(hook_url, tracking_id, "OutForDelivery")

Enforced like AfterShip: ``as-api-key`` (401 ``Invalid API key.``), ``tracking_number``
required (400/4007), one tracking per slug + number (400/4003 ``Tracking already exists.``),
unknown id (404/4004 ``Tracking does not exist.``), invalid JSON (400/4001); bodies are
``{"meta": {...}, "data": ...}``. Routes are relative, so it works mounted under a prefix.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors.aftership import SIGNATURE_HEADER, sign_body

__all__ = ["SANDBOX_API_KEY", "SANDBOX_WEBHOOK_SECRET", "AfterShipState", "make_aftership_app"]

SANDBOX_API_KEY = "asat_sandbox_0123456789abcdef"
SANDBOX_WEBHOOK_SECRET = "sandbox-webhook-secret"


def _error(status: int, code: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"meta": {"code": code, "message": message, "type": kind}, "data": {}}, status_code=status)


def _iso(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))


@dataclass
class AfterShipState:
    """The fake's trackings (by id) and credentials."""

    api_key: str = field(default=SANDBOX_API_KEY, repr=False)
    webhook_secret: str = field(default=SANDBOX_WEBHOOK_SECRET, repr=False)
    trackings: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0

    def find(self, slug: str, number: str) -> dict[str, Any] | None:
        return next((t for t in self.trackings.values()
                     if t["slug"] == slug and t["tracking_number"] == number), None)

    def update(self, tracking_id: str, tag: str, subtag: str | None = None, message: str = "") -> dict[str, Any]:
        """Move a tracking to ``tag``/``subtag`` and add a checkpoint, as a carrier scan would."""
        tracking = self.trackings[tracking_id]
        subtag = subtag or f"{tag}_001"
        checkpoint = {"checkpoint_time": _iso(), "created_at": _iso(), "slug": tracking["slug"], "tag": tag,
                      "subtag": subtag, "message": message or tag, "location": "Sandbox Hub"}
        tracking.update(tag=tag, subtag=subtag, subtag_message=message or tag, updated_at=_iso())
        tracking["checkpoints"].append(checkpoint)
        return tracking

    def webhook(self, tracking_id: str, tag: str, subtag: str | None = None,
                event: str = "tracking_update") -> tuple[bytes, dict[str, str]]:
        """A signed webhook for a tracking update: ``(body, headers)``."""
        tracking = self.update(tracking_id, tag, subtag)
        payload = {"event_id": str(uuid.uuid4()), "event": event, "ts": int(time.time()),
                   "is_tracking_first_tag": True, "msg": tracking}
        body = orjson.dumps(payload)
        return body, {"content-type": "application/json", SIGNATURE_HEADER: sign_body(self.webhook_secret, body)}

    async def push(self, url: str, tracking_id: str, tag: str, subtag: str | None = None,
                   client: httpx.AsyncClient | None = None) -> httpx.Response:
        """POST a signed tracking_update webhook to ``url``."""
        body, headers = self.webhook(tracking_id, tag, subtag)
        if client is not None:
            return await client.post(url, content=body, headers=headers)
        async with httpx.AsyncClient() as own:
            return await own.post(url, content=body, headers=headers)


def make_aftership_app(state: AfterShipState) -> Starlette:
    """``POST trackings``, ``GET trackings``, ``GET trackings/{id}`` over ``state``."""

    def refused(request: Request) -> JSONResponse | None:
        state.requests += 1
        if request.headers.get("as-api-key") != state.api_key:
            return _error(401, 401, "Unauthorized", "Invalid API key.")
        return None

    async def create(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, 4001, "BadRequest", "Invalid JSON data.")
        if not isinstance(body, dict) or not body.get("tracking_number"):
            return _error(400, 4007, "BadRequest", "tracking_number is required.")
        slug = body.get("slug") or "dhl"  # 'detected' courier
        if state.find(slug, body["tracking_number"]):
            return _error(400, 4003, "BadRequest", "Tracking already exists.")
        tracking_id = uuid.uuid4().hex
        tracking = {
            "id": tracking_id, "created_at": _iso(), "updated_at": _iso(), "tracking_number": body["tracking_number"],
            "slug": slug, "active": True, "title": body.get("title") or body["tracking_number"],
            "order_id": body.get("order_id"), "custom_fields": body.get("custom_fields"),
            "customers": body.get("customers") or [], "tag": "Pending", "subtag": "Pending_001",
            "subtag_message": "Pending", "checkpoints": [],
            "courier_tracking_link": f"https://sandbox.example/track/{slug}/{body['tracking_number']}",
        }
        state.trackings[tracking_id] = tracking
        return JSONResponse({"meta": {"code": 201}, "data": tracking}, status_code=201)

    async def get_one(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        tracking = state.trackings.get(request.path_params["tracking_id"])
        if tracking is None:
            return _error(404, 4004, "NotFound", "Tracking does not exist.")
        return JSONResponse({"meta": {"code": 200}, "data": tracking})

    async def get_many(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        numbers = set(filter(None, request.query_params.get("tracking_numbers", "").split(",")))
        slugs = set(filter(None, request.query_params.get("slug", "").split(",")))
        found = [t for t in state.trackings.values()
                 if (not numbers or t["tracking_number"] in numbers) and (not slugs or t["slug"] in slugs)]
        pagination = {"total": len(found), "next_cursor": None, "has_next_page": False}
        return JSONResponse({"meta": {"code": 200}, "data": {"pagination": pagination, "trackings": found}})

    return Starlette(routes=[
        Route("/trackings", create, methods=["POST"]),
        Route("/trackings", get_many, methods=["GET"]),
        Route("/trackings/{tracking_id}", get_one, methods=["GET"]),
    ])
