"""The ``request_tracker`` connector: Best Practical RT 5 tickets over REST2 (``/REST/2.0``).

Looked up: RT::REST2 documentation (https://docs.bestpractical.com/rt/latest/RT/REST2.html) and
its sources in bestpractical/rt (lib/RT/REST2/Resource/{Ticket,Message}.pm,
Record/{Writable,WithETag}.pm):
* auth: ``Authorization: token <TOKEN>`` (RT::Authen::Token); refused → 401 ``{"message": "Unauthorized"}``;
* ``POST /ticket`` JSON ``{Queue, Subject, Requestor, Cc, Owner, Content, ContentType, Priority,
  Status, CustomFields: {name-or-id: value}}`` → ``201`` ``{"id", "type": "ticket", "_url"}``;
  no Queue / unknown queue → 400 ``{"message": "Could not create ticket. Queue not set"}`` /
  ``"Unable to find queue"``;
* ``GET /ticket/{id}`` → the ticket with an ``ETag`` header (the id of its latest transaction);
* ``PUT /ticket/{id}`` with ``If-Match: <ETag>`` → ``200`` and a list of messages like
  ``["Ticket 1: Subject changed from 'a' to 'b'"]``; a stale ETag → ``412 {"message":
  "Precondition Failed"}`` and nothing changed;
* ``POST /ticket/{id}/correspond`` and ``/comment`` JSON ``{Content, ContentType, Subject,
  Status, TimeTaken}`` → ``201`` with messages (``["Correspondence added"]``) and a ``Location``
  of the new transaction; Content without ContentType → 400.

``update_ticket`` reads the ticket's ETag, then PUTs with ``If-Match``; on 412 (someone changed
the ticket meanwhile) it reads again and retries, ``max_conflict_retries`` times, then raises
RetryableError. RT has no idempotency key: a retried ``create_ticket``, ``correspond`` or
``comment`` after a lost answer can create a second ticket or message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    PermanentError,
    RetryableError,
    action,
)
from connectors.vendor import VendorClient


def rt_message(body: Any) -> str:
    """RT's error text: ``{"message": "..."}``."""
    return str(body["message"]) if isinstance(body, Mapping) and body.get("message") else ""


@dataclass(frozen=True, slots=True)
class RTSettings:
    base_url: str  # ends in /REST/2.0
    token: str = field(repr=False)
    queue: str | None = None
    timeout: float = 10.0
    max_conflict_retries: int = 3

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RTSettings:
        return cls(
            base_url=str(raw["base_url"]).rstrip("/"),
            token=raw["token"],
            queue=raw.get("queue"),
            timeout=float(raw.get("timeout", 10)),
            max_conflict_retries=int(raw.get("max_conflict_retries", 3)),
        )


_ID = {"type": "integer", "minimum": 1, "description": "RT ticket id"}
_PEOPLE = {"type": ["string", "array"], "items": {"type": "string"}, "description": "email address(es) or user names"}
_TICKET_FIELDS: dict[str, Any] = {
    "Queue": {"type": ["string", "integer"], "description": "queue name or id; default settings.queue"},
    "Subject": {"type": "string"},
    "Requestor": _PEOPLE,
    "Cc": _PEOPLE,
    "AdminCc": _PEOPLE,
    "Owner": {"type": "string"},
    "Status": {"type": "string", "description": "a status of the queue's lifecycle, e.g. new, open, stalled, resolved"},
    "Priority": {"type": "integer"},
    "Due": {"type": "string"},
    "CustomFields": {"type": "object", "description": "custom field name or id → value (or list of values)"},
}
_MESSAGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "Content"],
    "properties": {
        "id": _ID,
        "Content": {"type": "string", "minLength": 1},
        "ContentType": {"enum": ["text/plain", "text/html"], "description": "default text/plain"},
        "Subject": {"type": "string"},
        "Status": {"type": "string", "description": "set the ticket's status too"},
        "TimeTaken": {"type": "integer", "minimum": 0, "description": "minutes"},
    },
}


def _id_of(value: Any) -> Any:
    """RT sends ids as strings; numbers come back as ints."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _ref(value: Any) -> Any:
    """``{"id": ..., "type": ..., "_url": ...}`` → its id; lists of them → list of ids."""
    if isinstance(value, list):
        return [_ref(v) for v in value]
    return value.get("id") if isinstance(value, Mapping) else value


class RequestTrackerConnector(Connector):
    """Create, update, reply to, comment on and read RT tickets through REST2."""

    type_name = "request_tracker"
    description = "Request Tracker (RT 5) tickets over REST2, token auth, ETag-guarded updates."
    secret_fields = frozenset({"token"})
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url", "token"],
        "properties": {
            "base_url": {"type": "string", "pattern": "^https?://.*/REST/2\\.0/?$", "description": "e.g. https://rt.example.com/REST/2.0"},
            "token": {"type": "string", "minLength": 1, "description": "an RT auth token (Settings > Auth Tokens); use ${ENV}"},
            "queue": {"type": "string", "minLength": 1, "description": "default queue for create_ticket"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds per API call (default 10)"},
            "max_conflict_retries": {"type": "integer", "minimum": 0, "maximum": 10, "description": "re-reads after 412 in update_ticket (default 3)"},
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = RTSettings.parse(settings)
        self.http = VendorClient(name, self.settings.base_url, {"Authorization": f"token {self.settings.token}"},
                                 self.settings.timeout, rt_message, self.deps.http, secrets=[self.settings.token])

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    @action("create_ticket",
            {"type": "object", "additionalProperties": False, "required": ["Subject"],
             "properties": {**_TICKET_FIELDS, "Content": {"type": "string"},
                            "ContentType": {"enum": ["text/plain", "text/html"]}}},
            "POST /ticket; returns {id, type, url}.")
    async def create_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        ticket = dict(payload)
        if ticket.setdefault("Queue", self.settings.queue) is None:
            raise PermanentError(f"connector {self.name!r} action 'create_ticket' at {ctx.step}: Queue: not given; "
                                 "set it in the input or settings.queue")
        if "Content" in ticket:
            ticket.setdefault("ContentType", "text/plain")
        response = await self.http.call("POST", "/ticket", ctx, "create_ticket", json=ticket)
        body = orjson.loads(response.content)
        return {"id": _id_of(body.get("id")), "type": body.get("type"), "url": body.get("_url")}

    @action("update_ticket",
            {"type": "object", "additionalProperties": False, "required": ["id"], "minProperties": 2,
             "properties": {"id": _ID, **_TICKET_FIELDS}},
            "GET the ETag, PUT /ticket/{id} with If-Match (re-read on 412); returns {id, messages}.")
    async def update_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        ticket_id = payload["id"]
        fields = {k: v for k, v in payload.items() if k != "id"}
        for _ in range(self.settings.max_conflict_retries + 1):
            etag = (await self._get(ticket_id, ctx, "update_ticket")).headers.get("etag")
            headers = {"If-Match": etag} if etag else {}
            try:
                response = await self.http.call("PUT", f"/ticket/{ticket_id}", ctx, "update_ticket", json=fields, headers=headers)
            except PermanentError as err:
                if err.status != 412:
                    raise
                continue  # changed by someone else between our GET and PUT: read again
            return {"id": ticket_id, "messages": orjson.loads(response.content or b"[]")}
        raise RetryableError(
            f"connector {self.name!r} action 'update_ticket' at {ctx.step}: ticket {ticket_id} changed under us "
            f"{self.settings.max_conflict_retries + 1} times (412 Precondition Failed); will retry later",
            status=412,
        )

    @action("correspond", _MESSAGE, "Reply to the requestors: POST /ticket/{id}/correspond; returns {id, messages, transaction_url}.")
    async def correspond(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        return await self._message("correspond", payload, ctx)

    @action("comment", _MESSAGE, "Internal comment: POST /ticket/{id}/comment; returns {id, messages, transaction_url}.")
    async def comment(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        return await self._message("comment", payload, ctx)

    async def _message(self, kind: str, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        body = {k: v for k, v in payload.items() if k != "id"}
        body.setdefault("ContentType", "text/plain")  # RT refuses JSON Content without it
        response = await self.http.call("POST", f"/ticket/{payload['id']}/{kind}", ctx, kind, json=body)
        return {"id": payload["id"], "messages": orjson.loads(response.content or b"[]"),
                "transaction_url": response.headers.get("location")}

    @action("get_ticket", {"type": "object", "additionalProperties": False, "required": ["id"], "properties": {"id": _ID}},
            "GET /ticket/{id}; returns {id, subject, status, queue, owner, priority, requestors, created, last_updated, etag, url}.")
    async def get_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        response = await self._get(payload["id"], ctx, "get_ticket")
        t = orjson.loads(response.content)
        return {
            "id": _id_of(t.get("id")), "subject": t.get("Subject"), "status": t.get("Status"),
            "queue": _ref(t.get("Queue")), "owner": _ref(t.get("Owner")), "priority": t.get("Priority"),
            "requestors": _ref(t.get("Requestor") or []), "created": t.get("Created"),
            "last_updated": t.get("LastUpdated"), "etag": response.headers.get("etag"),
            "url": f"{self.settings.base_url}/ticket/{payload['id']}",
        }

    async def _get(self, ticket_id: int, ctx: CallContext, action_name: str) -> Any:
        return await self.http.call("GET", f"/ticket/{ticket_id}", ctx, action_name)
