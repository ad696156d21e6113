"""A fake Zendesk Support API v2 (tickets), enforcing what Zendesk enforces.

    state = ZendeskState()                       # sandbox credentials: SANDBOX_* below
    app = with_faults(make_zendesk_app(state), faults)
    ... state.tickets[1]["status"], state.comments[1], state.idempotent_hits

* auth: Basic ``{email}/token:{api_token}`` or ``Bearer {oauth_token}``; else 401
  ``{"error": "Couldn't authenticate you"}``;
* ``POST /api/v2/tickets.json``: a comment body is required, enums checked → 422 RecordInvalid
  with ``details``; ``Idempotency-Key``: a repeat with the same payload returns the first answer
  with ``x-idempotency-lookup: hit``, a different payload → 400 ``IdempotentRequestError``;
* ``PUT|GET /api/v2/tickets/{id}.json`` (404 RecordNotFound), ``GET /api/v2/tickets.json?external_id=``.

Routes are relative, so the app works mounted under ``/sandbox/zendesk``.
"""

from __future__ import annotations

import base64
import itertools
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["SANDBOX_API_TOKEN", "SANDBOX_EMAIL", "SANDBOX_OAUTH_TOKEN", "ZendeskState", "make_zendesk_app"]

SANDBOX_EMAIL = "agent@sandbox.example"
SANDBOX_API_TOKEN = "sandbox-zendesk-api-token"
SANDBOX_OAUTH_TOKEN = "sandbox-zendesk-oauth-token"

_ENUMS = {
    "priority": {"urgent", "high", "normal", "low"},
    "type": {"problem", "incident", "question", "task"},
    "status": {"new", "open", "pending", "hold", "solved", "closed"},
}
_WRITABLE = ("subject", "priority", "type", "status", "tags", "group_id", "assignee_id", "external_id", "custom_fields")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json; charset=utf-8")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _invalid(details: dict[str, list[dict[str, str]]]) -> Response:
    return _json(422, {"error": "RecordInvalid", "description": "Record validation errors", "details": details})


class ZendeskState:
    """Tickets, comments and idempotency records of one fake Zendesk account."""

    def __init__(self, email: str = SANDBOX_EMAIL, api_token: str = SANDBOX_API_TOKEN,
                 oauth_token: str = SANDBOX_OAUTH_TOKEN):
        self._basic = "Basic " + base64.b64encode(f"{email}/token:{api_token}".encode()).decode()
        self._bearer = f"Bearer {oauth_token}"
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) that reached the fake
        self.idempotent_hits = 0
        self._idempotency: dict[str, tuple[bytes, int, bytes]] = {}  # key → (payload, status, body)
        self._ids = itertools.count(1)
        self._users: dict[str, int] = {}

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") in (self._basic, self._bearer)

    def validate(self, ticket: dict[str, Any], creating: bool) -> dict[str, list[dict[str, str]]]:
        details: dict[str, list[dict[str, str]]] = {}
        comment = ticket.get("comment")
        body = comment.get("body") or comment.get("html_body") if isinstance(comment, dict) else None
        if (creating or comment is not None) and not (body or ticket.get("description")):
            details["base"] = [{"description": "Description: cannot be blank", "error": "BlankValue"}]
        for name, allowed in _ENUMS.items():
            if name in ticket and ticket[name] not in allowed:
                details[name] = [{"description": f"{name.title()}: is invalid", "error": "InvalidValue"}]
        email = (ticket.get("requester") or {}).get("email")
        if email is not None and "@" not in str(email):
            details["requester"] = [{"description": "Requester: Email is not properly formatted", "error": "InvalidValue"}]
        return details

    def create(self, ticket: dict[str, Any], base: str) -> dict[str, Any]:
        tid = next(self._ids)
        comment = ticket.get("comment") or {"body": ticket.get("description", "")}
        requester = ticket.get("requester") or {}
        record = {
            "id": tid, "url": f"{base}/api/v2/tickets/{tid}.json", "subject": ticket.get("subject"),
            "description": comment.get("body") or comment.get("html_body"), "status": "new", "priority": None,
            "type": None, "tags": [], "group_id": None, "assignee_id": None, "external_id": None,
            "custom_fields": [], "requester_id": self._user(requester.get("email") or requester.get("name")),
            "created_at": _now(), "updated_at": _now(),
        }
        record.update({k: ticket[k] for k in _WRITABLE if k in ticket})
        if record["status"] == "new" and record["assignee_id"]:
            record["status"] = "open"  # Zendesk opens a ticket that has an assignee
        self.tickets[tid] = record
        self.comments[tid] = [{"body": record["description"], "public": comment.get("public", True)}]
        return record

    def update(self, tid: int, ticket: dict[str, Any]) -> dict[str, Any]:
        record = self.tickets[tid]
        record.update({k: ticket[k] for k in _WRITABLE if k in ticket})
        if isinstance(ticket.get("comment"), dict):
            c = ticket["comment"]
            self.comments[tid].append({"body": c.get("body") or c.get("html_body"), "public": c.get("public", True)})
        record["updated_at"] = _now()
        return record

    def _user(self, who: Any) -> int | None:
        return self._users.setdefault(str(who), 1000 + len(self._users)) if who else None


def make_zendesk_app(state: ZendeskState) -> Starlette:
    """The fake's Starlette app; ``state`` holds the account's data for tests to inspect."""

    def base(request: Request) -> str:
        # root_path carries a Mount's prefix (/sandbox/zendesk); base_url does not, in Starlette 1.x
        return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}".rstrip("/")

    async def guarded(request: Request) -> tuple[Response | None, Any]:
        state.requests.append((request.method, request.url.path, dict(request.headers)))
        if not state.authorized(request):
            return _json(401, {"error": "Couldn't authenticate you"}), None
        if request.method not in ("PUT", "POST"):
            return None, None
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json(400, {"error": "Unprocessable Entity", "description": "Invalid JSON body"}), None
        if not isinstance(body, dict) or not isinstance(body.get("ticket"), dict):
            return _json(400, {"error": "InvalidEndpoint", "description": "expected {\"ticket\": {...}}"}), None
        return None, body

    async def tickets(request: Request) -> Response:
        refused, body = await guarded(request)
        if refused:
            return refused
        if request.method == "GET":
            wanted = request.query_params.get("external_id")
            found = [t for t in state.tickets.values() if wanted is None or t["external_id"] == wanted]
            return _json(200, {"tickets": found, "next_page": None, "previous_page": None, "count": len(found)})
        key = request.headers.get("idempotency-key")
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        if key and key in state._idempotency:
            payload, status, answer = state._idempotency[key]
            if payload != canonical:
                return _json(400, {"error": "IdempotentRequestError",
                                   "description": "Request parameters don't match the original request for this Idempotency-Key"})
            state.idempotent_hits += 1
            return Response(answer, status, headers={"x-idempotency-lookup": "hit"}, media_type="application/json")
        if details := state.validate(body["ticket"], creating=True):
            return _invalid(details)
        ticket = state.create(body["ticket"], base(request))
        answer = orjson.dumps({"ticket": ticket, "audit": {"ticket_id": ticket["id"], "events": []}})
        if key:
            state._idempotency[key] = (canonical, 201, answer)
        headers = {"location": ticket["url"], **({"x-idempotency-lookup": "miss"} if key else {})}
        return Response(answer, 201, headers=headers, media_type="application/json")

    async def ticket(request: Request) -> Response:
        refused, body = await guarded(request)
        if refused:
            return refused
        tid = request.path_params["id"]
        if tid not in state.tickets:
            return _json(404, {"error": "RecordNotFound", "description": "Not found"})
        if request.method == "GET":
            return _json(200, {"ticket": state.tickets[tid]})
        if details := state.validate(body["ticket"], creating=False):
            return _invalid(details)
        return _json(200, {"ticket": state.update(tid, body["ticket"]), "audit": {"ticket_id": tid, "events": []}})

    return Starlette(routes=[
        Route("/api/v2/tickets.json", tickets, methods=["GET", "POST"]),
        Route("/api/v2/tickets/{id:int}.json", ticket, methods=["GET", "PUT"]),
    ])
