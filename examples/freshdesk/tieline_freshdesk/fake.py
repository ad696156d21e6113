"""A fake Freshdesk (API v2 tickets and notes) for tests and the bus's sandbox.

    state = FreshdeskState()                       # sandbox key: SANDBOX_API_KEY
    app = make_freshdesk_app(state)                # relative routes: mountable under a prefix
    ... state.tickets[1]["subject"], state.notes

It enforces what Freshdesk enforces for these calls: Basic auth with the API key as user
(401 ``invalid_credentials`` otherwise), JSON content type (415), a requester (one of
email/phone/requester_id), a name with a phone and no email, the enumerated status,
priority and source values (400 ``Validation failed`` with field errors), and 404 with an
empty body for an unknown ticket. Failures on demand: wrap with connectors.testing.faults.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["SANDBOX_API_KEY", "FreshdeskState", "make_freshdesk_app"]

SANDBOX_API_KEY = "sandboxFreshdeskKey123"
_ENUMS = {"status": (2, 3, 4, 5), "priority": (1, 2, 3, 4), "source": (1, 2, 3, 7, 9, 10)}
_REQUESTER = ("requester_id", "phone", "email", "twitter_id", "facebook_id", "unique_external_id")


class FreshdeskState:
    """Tickets and notes created through the fake; inspect them in tests."""

    def __init__(self, api_key: str = SANDBOX_API_KEY) -> None:
        self.api_key = api_key
        self.tickets: dict[int, dict[str, Any]] = {}
        self.notes: list[dict[str, Any]] = []
        self._next_id = 1

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1


def _error(field: str, message: str, code: str) -> JSONResponse:
    return JSONResponse({"description": "Validation failed",
                         "errors": [{"field": field, "message": message, "code": code}]}, 400)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_freshdesk_app(state: FreshdeskState) -> Starlette:
    """The fake's ASGI app over ``state``."""

    def authorised(request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        try:
            user = base64.b64decode(value, validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return False
        return scheme.lower() == "basic" and user == state.api_key

    async def body_of(request: Request) -> dict[str, Any] | Response:
        if not authorised(request):
            return JSONResponse({"code": "invalid_credentials",
                                 "message": "You have to be logged in to perform this action."}, 401)
        if request.method == "GET":
            return {}
        if "application/json" not in request.headers.get("content-type", ""):
            return JSONResponse({"code": "invalid_content_type",
                                 "message": "Content-Type header should have application/json"}, 415)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"code": "invalid_json", "message": "Request body has invalid json format"}, 400)
        for key, allowed in _ENUMS.items():
            if key in body and body[key] not in allowed:
                return _error(key, f"It should be one of these values: '{','.join(map(str, allowed))}'",
                              "invalid_value")
        return body

    async def create(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        if not any(body.get(k) for k in _REQUESTER):
            return _error("requester_id", "Please fill at least 1 of requester_id, phone, email, "
                          "twitter_id, facebook_id, unique_external_id fields", "missing_field")
        if body.get("phone") and not body.get("email") and not body.get("name"):
            return _error("name", "It should be a/an String", "missing_field")
        tid = state.next_id()
        ticket = {"status": 2, "priority": 1, "source": 2, "tags": [], **body, "id": tid,
                  "requester_id": body.get("requester_id") or 1000 + tid,
                  "description_text": body.get("description", ""), "created_at": _now(), "updated_at": _now()}
        state.tickets[tid] = ticket
        return JSONResponse(ticket, 201, headers={"location": f"/api/v2/tickets/{tid}"})

    async def one(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        ticket = state.tickets.get(int(request.path_params["id"]))
        if ticket is None:
            return Response(status_code=404)
        if request.method == "PUT":
            ticket.update(body, updated_at=_now())
        return JSONResponse(ticket)

    async def add_note(request: Request) -> Response:
        body = await body_of(request)
        if isinstance(body, Response):
            return body
        tid = int(request.path_params["id"])
        if tid not in state.tickets:
            return Response(status_code=404)
        if not body.get("body"):
            return _error("body", "It should be a/an String", "missing_field")
        note = {"id": state.next_id(), "ticket_id": tid, "private": body.get("private", True),
                "incoming": False, "body": body["body"], "created_at": _now()}
        state.notes.append(note)
        return JSONResponse(note, 201)

    return Starlette(routes=[
        Route("/api/v2/tickets", create, methods=["POST"]),
        Route("/api/v2/tickets/{id:int}", one, methods=["GET", "PUT"]),
        Route("/api/v2/tickets/{id:int}/notes", add_note, methods=["POST"]),
    ])
