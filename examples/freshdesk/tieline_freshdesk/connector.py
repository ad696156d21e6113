"""The ``freshdesk`` connector: tickets and notes in Freshdesk over its REST API v2.

A worked example of a connector shipped as its own distribution (``tieline-freshdesk``),
registered under the ``tieline.connectors`` entry point and tested with the contract kit.

Vendor facts, looked up in the Freshdesk API v2 reference (https://developers.freshdesk.com/api/)
and Freshworks' own samples (github.com/freshworks/fresh-samples, python_samples/):

* base ``https://{domain}.freshdesk.com/api/v2``; HTTP Basic auth, API key as user, ``X`` as password;
* ``POST /tickets`` (201; one of ``email``, ``phone``, ``requester_id`` required; ``status``
  2 open, 3 pending, 4 resolved, 5 closed; ``priority`` 1 low .. 4 urgent; ``source`` 1 email,
  2 portal, 3 phone, 7 chat, 9 feedback widget, 10 outbound email), ``PUT /tickets/{id}`` (200),
  ``POST /tickets/{id}/notes`` (201), ``GET /tickets/{id}`` (200);
* errors: 400 ``{"description": "Validation failed", "errors": [{"field", "message", "code"}]}``,
  401/403 ``{"code", "message"}``, 404 with an empty body, 429 with ``Retry-After`` (seconds).

Freshdesk has no idempotency key: a create retried after a lost answer can make a duplicate.
Freshdesk webhooks (automation rules) are unsigned, so this type declares no inbound events.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    OwnsHttpClient,
    PermanentError,
    RetryableError,
    action,
    classify_http_status,
)
from connectors.http import redact, where

_ID = {"type": "integer", "minimum": 1, "description": "Freshdesk ticket id"}
_TICKET_FIELDS: dict[str, Any] = {
    "subject": {"type": "string", "minLength": 1},
    "description": {"type": "string", "description": "HTML content of the ticket"},
    "status": {"enum": [2, 3, 4, 5], "description": "2 open, 3 pending, 4 resolved, 5 closed"},
    "priority": {"enum": [1, 2, 3, 4], "description": "1 low, 2 medium, 3 high, 4 urgent"},
    "source": {"enum": [1, 2, 3, 7, 9, 10], "description": "1 email, 2 portal, 3 phone, 7 chat, 9 widget, 10 outbound"},
    "tags": {"type": "array", "items": {"type": "string"}},
    "type": {"type": "string"},
    "group_id": {"type": "integer"},
    "responder_id": {"type": "integer"},
    "custom_fields": {"type": "object"},
}
_REQUESTER: dict[str, Any] = {
    "email": {"type": "string", "minLength": 3},
    "phone": {"type": "string", "minLength": 3},
    "requester_id": {"type": "integer", "minimum": 1},
    "name": {"type": "string", "description": "requester's name; Freshdesk wants it with phone and no email"},
}


@dataclass(frozen=True, slots=True)
class FreshdeskSettings:
    """Parsed once; the API key stays out of repr."""

    base_url: str  # site root, e.g. https://acme.freshdesk.com
    api_key: str = field(repr=False)
    timeout: float = 10.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> FreshdeskSettings:
        base = raw.get("base_url") or f"https://{raw['domain']}.freshdesk.com"
        return cls(str(base).rstrip("/"), raw["api_key"], float(raw.get("timeout", 10)))

    def authorization(self) -> str:
        return "Basic " + base64.b64encode(f"{self.api_key}:X".encode()).decode()


def freshdesk_message(response: httpx.Response) -> str:
    """The vendor's own words from an error body: field errors, or code and message."""
    try:
        body = orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        return response.text[:300]
    if not isinstance(body, Mapping):
        return response.text[:300]
    if isinstance(body.get("errors"), list):
        parts = [f"{e.get('field', '?')}: {e.get('message', '')} ({e.get('code', '')})"
                 for e in body["errors"] if isinstance(e, Mapping)]
        return f"{body.get('description', 'error')}: " + "; ".join(parts)
    if "message" in body:
        return f"{body.get('code', 'error')}: {body['message']}"
    if response.status_code == 404:
        return "not found (is the ticket id right, and the domain?)"
    return response.text[:300]


def ticket_summary(ticket: Mapping[str, Any], portal: str) -> dict[str, Any]:
    """What ticket actions return; ``url`` is the agent's page of the ticket."""
    keys = ("id", "subject", "status", "priority", "requester_id", "tags", "updated_at")
    return {**{k: ticket.get(k) for k in keys}, "url": f"{portal}/a/tickets/{ticket.get('id')}"}


class FreshdeskConnector(OwnsHttpClient, Connector):
    """Create, update, annotate and read Freshdesk tickets."""

    type_name = "freshdesk"
    description = "Freshdesk tickets and notes over the REST API v2 (API key auth)."
    secret_fields = frozenset({"api_key"})
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["api_key"],
        "anyOf": [{"required": ["domain"]}, {"required": ["base_url"]}],
        "properties": {
            "domain": {"type": "string", "pattern": "^[A-Za-z0-9-]+$", "description": "'acme' for acme.freshdesk.com"},
            "base_url": {"type": "string", "pattern": "^https?://", "description": "site root instead of domain (sandbox, tests)"},
            "api_key": {"type": "string", "minLength": 1, "description": "agent's API key (Profile settings); use ${FRESHDESK_API_KEY}"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds per API call (default 10)"},
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = FreshdeskSettings.parse(settings)


    @action("create_ticket", {
        "type": "object", "additionalProperties": False, "required": ["subject", "description"],
        "anyOf": [{"required": ["email"]}, {"required": ["phone"]}, {"required": ["requester_id"]}],
        "properties": {**_REQUESTER, **_TICKET_FIELDS},
    }, "POST /api/v2/tickets; returns {id, subject, status, priority, requester_id, tags, updated_at, url}.")
    async def create_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        return ticket_summary(await self._call("POST", "/api/v2/tickets", ctx, dict(payload)), self.settings.base_url)

    @action("update_ticket", {
        "type": "object", "additionalProperties": False, "required": ["id"], "minProperties": 2,
        "properties": {"id": _ID, **_TICKET_FIELDS},
    }, "PUT /api/v2/tickets/{id} with the other fields; returns the ticket summary.")
    async def update_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        body = {k: v for k, v in payload.items() if k != "id"}
        ticket = await self._call("PUT", f"/api/v2/tickets/{payload['id']}", ctx, body)
        return ticket_summary(ticket, self.settings.base_url)

    @action("add_note", {
        "type": "object", "additionalProperties": False, "required": ["id", "body"],
        "properties": {
            "id": _ID, "body": {"type": "string", "minLength": 1, "description": "HTML content of the note"},
            "private": {"type": "boolean", "description": "agents only (Freshdesk's default: true)"},
            "notify_emails": {"type": "array", "items": {"type": "string"}},
        },
    }, "POST /api/v2/tickets/{id}/notes; returns {id, ticket_id, private}.")
    async def add_note(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        body = {k: v for k, v in payload.items() if k != "id"}
        note = await self._call("POST", f"/api/v2/tickets/{payload['id']}/notes", ctx, body)
        return {"id": note.get("id"), "ticket_id": note.get("ticket_id"), "private": note.get("private")}

    @action("get_ticket", {"type": "object", "additionalProperties": False, "required": ["id"], "properties": {"id": _ID}},
            "GET /api/v2/tickets/{id}; returns the ticket summary plus description_text.")
    async def get_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        ticket = await self._call("GET", f"/api/v2/tickets/{payload['id']}", ctx)
        return {**ticket_summary(ticket, self.settings.base_url), "description_text": ticket.get("description_text")}

    async def _call(self, method: str, path: str, ctx: CallContext, json: Any = None) -> dict[str, Any]:
        """One API call; failures become Retryable/Permanent errors naming action and host."""
        await self.start()
        assert self._client is not None
        headers = {"Authorization": self.settings.authorization()}
        if ctx.traceparent:
            headers["traceparent"] = ctx.traceparent
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        req = self._client.build_request(method, self.settings.base_url + path, json=json,
                                         headers=headers, timeout=timeout)
        target = f"connector {self.name!r} at {ctx.step}: {method} {where(req.url)}"
        secrets = [self.settings.api_key, self.settings.authorization()]
        try:
            response = await self._client.send(req)
        except httpx.TimeoutException:
            raise RetryableError(f"{target}: no answer within {timeout:g} s; will retry") from None
        except httpx.TransportError as exc:
            detail = redact(str(exc), secrets) or type(exc).__name__
            raise RetryableError(f"{target}: {detail}; will retry") from None
        if response.status_code >= 400:
            err = classify_http_status(response.status_code, response.headers.get("retry-after"),
                                       redact(freshdesk_message(response), secrets))
            err.args = (f"{target}: {err.args[0]}",)
            raise err
        try:
            return orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            raise PermanentError(f"{target}: HTTP {response.status_code} answer is not JSON; "
                                 "is base_url the Freshdesk site root?") from None
