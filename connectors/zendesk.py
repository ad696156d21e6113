"""The ``zendesk`` connector: Zendesk Support (ticketing) API v2 out, ticket event webhooks in.

Looked up (search tool, docs/pages corpora):
* Ticketing API introduction, "Idempotency" —
  https://developer.zendesk.com/api-reference/ticketing/introduction/#idempotency :
  ``Idempotency-Key`` on POST /api/v2/tickets.json; the answer carries ``x-idempotency-lookup:
  miss`` the first time and ``hit`` when a repeat with the same payload returns the original
  ticket; the same key with a different payload is refused (400 ``IdempotentRequestError``).
* Tickets API (create/update/show, ``?external_id=`` listing), errors 401 ``{"error":
  "Couldn't authenticate you"}``, 422 ``{"error": "RecordInvalid", "description": ...,
  "details": {field: [{"description": ...}]}}``, 429 with ``Retry-After``.
* "Verifying webhook authenticity" — https://developer.zendesk.com/documentation/webhooks/verifying/ :
  ``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(secret, TIMESTAMP + BODY)), the timestamp
  (ISO 8601, e.g. ``2021-03-18T19:25:00Z``) in ``X-Zendesk-Webhook-Signature-Timestamp``.
* "Ticket events" — https://developer.zendesk.com/api-reference/webhooks/event-types/ticket-events :
  event-subscribed webhooks send ``{"type": "zen:event-type:ticket.status_changed", "id":
  <event id>, "account_id", "subject": "zen:ticket:<id>", "time", "detail": {ticket fields},
  "event": {"current", "previous"}, "zendesk_event_version"}``.

Event names are the ``type`` without the ``zen:event-type:`` prefix (``ticket.status_changed``).
Zendesk has no ``ticket.updated`` event type: subscribe to the specific ``*_changed`` events.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import structlog

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    InboundEvent,
    InboundRequest,
    PayloadError,
    VerificationError,
    action,
)
from connectors.vendor import VendorClient

log = structlog.get_logger(__name__)

SIGNATURE = "x-zendesk-webhook-signature"
SIGNATURE_TIMESTAMP = "x-zendesk-webhook-signature-timestamp"
EVENT_PREFIX = "zen:event-type:"

_ID = {"type": "integer", "minimum": 1, "description": "Zendesk ticket id"}
_FIELDS: dict[str, Any] = {
    "subject": {"type": "string", "minLength": 1},
    "comment": {
        "type": "object",
        "additionalProperties": False,
        "required": ["body"],
        "properties": {
            "body": {"type": "string", "minLength": 1},
            "html_body": {"type": "string"},
            "public": {"type": "boolean", "description": "false: an internal note (default true)"},
        },
    },
    "requester": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "email": {"type": "string", "format": "email"},
            "phone": {"type": "string"},
            "locale_id": {"type": "integer"},
        },
    },
    "priority": {"enum": ["urgent", "high", "normal", "low"]},
    "type": {"enum": ["problem", "incident", "question", "task"]},
    "status": {"enum": ["new", "open", "pending", "hold", "solved", "closed"]},
    "tags": {"type": "array", "items": {"type": "string"}},
    "group_id": {"type": "integer"},
    "assignee_id": {"type": "integer"},
    "external_id": {"type": "string"},
    "custom_fields": {
        "type": "array",
        "items": {"type": "object", "required": ["id", "value"], "properties": {"id": {"type": "integer"}, "value": {}}},
    },
}

_DETAIL = {
    "type": "object",
    "description": "the ticket's fields (ids are strings, status upper-case, as Zendesk sends them)",
    "properties": {"id": {"type": "string"}, "status": {"type": "string"}, "priority": {"type": ["string", "null"]},
                   "subject": {"type": "string"}, "external_id": {"type": ["string", "null"]}},
}
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "detail"],
    "properties": {
        "id": {"type": "string", "description": "event id (the dedupe key)"},
        "type": {"type": "string", "description": "e.g. zen:event-type:ticket.status_changed"},
        "account_id": {"type": "integer"},
        "subject": {"type": "string", "description": "zen:ticket:<id>"},
        "time": {"type": "string", "description": "ISO 8601"},
        "zendesk_event_version": {"type": "string"},
        "detail": _DETAIL,
        "event": {"type": "object", "description": "what changed, e.g. {current, previous}"},
    },
}
TICKET_EVENTS = (
    "ticket.created", "ticket.status_changed", "ticket.priority_changed", "ticket.comment_added",
    "ticket.agent_assignment_changed", "ticket.group_assignment_changed", "ticket.tags_changed",
    "ticket.subject_changed", "ticket.custom_field_changed", "ticket.external_id_changed",
    "ticket.soft_deleted", "ticket.merged",
)


@dataclass(frozen=True, slots=True)
class ZendeskSettings:
    """Parsed once; credentials stay out of repr."""

    base_url: str
    auth_header: str = field(repr=False)
    webhook_secret: str = field(default="", repr=False)
    tolerance: float = 300.0
    timeout: float = 10.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ZendeskSettings:
        base = raw.get("base_url") or f"https://{raw['subdomain']}.zendesk.com"
        if raw.get("oauth_token"):
            auth = f"Bearer {raw['oauth_token']}"
        else:  # API token auth: "{email}/token:{api_token}" as the Basic user:password pair
            pair = f"{raw['email']}/token:{raw['api_token']}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        return cls(
            base_url=str(base).rstrip("/"),
            auth_header=auth,
            webhook_secret=raw.get("webhook_secret", ""),
            tolerance=float(raw.get("signature_tolerance", 300)),
            timeout=float(raw.get("timeout", 10)),
        )


def zendesk_message(body: Any) -> str:
    """Zendesk's own words from an error body: error, description and every ``details`` message."""
    if not isinstance(body, Mapping):
        return ""
    error, description = body.get("error"), body.get("description")
    if isinstance(error, Mapping):  # some endpoints nest {"error": {"title", "message"}}
        error, description = error.get("title"), error.get("message")
    head = ": ".join(str(p) for p in (error, description) if p)
    parts = [head] if head else []
    details = body.get("details")
    if isinstance(details, Mapping):
        for name, items in details.items():
            for item in items if isinstance(items, list) else [items]:
                text = item.get("description") if isinstance(item, Mapping) else item
                parts.append(f"{name}: {text}")
    return "; ".join(parts)


def summary(ticket: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every ticket action returns."""
    return {k: ticket.get(k) for k in ("id", "status", "priority", "updated_at", "url")}


class ZendeskConnector(Connector):
    """Create, update, comment on and read Zendesk tickets; receive ticket event webhooks."""

    type_name = "zendesk"
    description = "Zendesk Support tickets (API v2) and signed ticket event webhooks."
    secret_fields = frozenset({"api_token", "oauth_token", "webhook_secret"})
    events = {name: _EVENT_SCHEMA for name in TICKET_EVENTS}
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "subdomain": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$", "description": "{subdomain}.zendesk.com"},
            "base_url": {"type": "string", "pattern": "^https?://", "description": "overrides https://{subdomain}.zendesk.com (sandbox, proxy)"},
            "email": {"type": "string", "minLength": 3, "description": "agent email for API token auth"},
            "api_token": {"type": "string", "minLength": 1, "description": "API token (Admin Center > Apps and integrations > Zendesk API); use ${ENV}"},
            "oauth_token": {"type": "string", "minLength": 1, "description": "OAuth access token, instead of email + api_token; use ${ENV}"},
            "webhook_secret": {"type": "string", "minLength": 1, "description": "the webhook's signing secret, to verify inbound events; use ${ENV}"},
            "signature_tolerance": {"type": "number", "exclusiveMinimum": 0, "description": "max age of a webhook signature timestamp, seconds (default 300)"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds per API call (default 10)"},
        },
        "anyOf": [{"required": ["subdomain"]}, {"required": ["base_url"]}],
        "oneOf": [{"required": ["email", "api_token"]}, {"required": ["oauth_token"]}],
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = ZendeskSettings.parse(settings)
        self.http = VendorClient(
            name, self.settings.base_url, {"Authorization": self.settings.auth_header},
            self.settings.timeout, zendesk_message, self.deps.http,
            secrets=[self.settings.auth_header, settings.get("api_token") or "", settings.get("oauth_token") or ""],
        )

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    # ----- outbound --------------------------------------------------------------------
    @action(
        "create_ticket",
        {"type": "object", "additionalProperties": False, "required": ["comment"], "properties": _FIELDS},
        "POST /api/v2/tickets.json with Idempotency-Key; returns {id, status, priority, updated_at, url, replayed}.",
    )
    async def create_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """A retry with the same key gets the ticket created the first time (``replayed: true``)."""
        response = await self.http.call(
            "POST", "/api/v2/tickets.json", ctx, "create_ticket",
            json={"ticket": dict(payload)}, headers={"Idempotency-Key": ctx.idempotency_key},
        )
        self._warn(response.headers)
        replayed = response.headers.get("x-idempotency-lookup", "").lower() == "hit"
        return {**summary(orjson.loads(response.content)["ticket"]), "replayed": replayed}

    @action(
        "update_ticket",
        {"type": "object", "additionalProperties": False, "required": ["id"], "minProperties": 2,
         "properties": {"id": _ID, **_FIELDS}},
        "PUT /api/v2/tickets/{id}.json with the given fields; returns {id, status, priority, updated_at, url}.",
    )
    async def update_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        fields = {k: v for k, v in payload.items() if k != "id"}
        return await self._put(payload["id"], fields, ctx, "update_ticket")

    @action(
        "add_comment",
        {"type": "object", "additionalProperties": False, "required": ["id", "body"],
         "properties": {"id": _ID, "body": {"type": "string", "minLength": 1}, "html_body": {"type": "string"},
                        "public": {"type": "boolean", "description": "false: internal note (default true)"},
                        "author_id": {"type": "integer"}, "status": _FIELDS["status"]}},
        "Add a public reply or internal note (PUT ticket.comment), optionally setting status.",
    )
    async def add_comment(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        comment = {k: payload[k] for k in ("body", "html_body", "public", "author_id") if k in payload}
        fields: dict[str, Any] = {"comment": comment}
        if "status" in payload:
            fields["status"] = payload["status"]
        return await self._put(payload["id"], fields, ctx, "add_comment")

    @action(
        "get_ticket",
        {"type": "object", "additionalProperties": False, "required": ["id"], "properties": {"id": _ID}},
        "GET /api/v2/tickets/{id}.json; returns {id, status, priority, updated_at, url, ticket}.",
    )
    async def get_ticket(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        response = await self.http.call("GET", f"/api/v2/tickets/{payload['id']}.json", ctx, "get_ticket")
        ticket = orjson.loads(response.content)["ticket"]
        return {**summary(ticket), "ticket": ticket}

    @action(
        "find_by_external_id",
        {"type": "object", "additionalProperties": False, "required": ["external_id"],
         "properties": {"external_id": {"type": "string", "minLength": 1}}},
        "GET /api/v2/tickets.json?external_id=...; returns {found, count, tickets: [summary...]}"
        " plus the first match's summary fields at the top (id null when none).",
    )
    async def find_by_external_id(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        response = await self.http.call(
            "GET", "/api/v2/tickets.json", ctx, "find_by_external_id", params={"external_id": payload["external_id"]}
        )
        tickets = [summary(t) for t in orjson.loads(response.content).get("tickets", [])]
        first = tickets[0] if tickets else summary({})
        return {**first, "found": bool(tickets), "count": len(tickets), "tickets": tickets}

    async def _put(self, ticket_id: int, fields: Mapping[str, Any], ctx: CallContext, name: str) -> dict[str, Any]:
        response = await self.http.call("PUT", f"/api/v2/tickets/{ticket_id}.json", ctx, name, json={"ticket": dict(fields)})
        self._warn(response.headers)
        return summary(orjson.loads(response.content)["ticket"])

    def _warn(self, headers: Mapping[str, str]) -> None:
        # Zendesk announces deprecated parameters and ignored fields in this header.
        if warning := headers.get("x-zendesk-api-warn"):
            log.warning("zendesk_api_warning", connector=self.name, warning=warning[:300])

    # ----- inbound ---------------------------------------------------------------------
    def verify(self, request: InboundRequest) -> None:
        """base64(HMAC-SHA256(secret, timestamp + body)), timestamp within ``signature_tolerance``."""
        secret = self.settings.webhook_secret
        if not secret:
            raise VerificationError(
                f"connector {self.name!r}: settings.webhook_secret is not set; copy the webhook's "
                "signing secret from Zendesk Admin Center > Webhooks into the connector"
            )
        signature, stamp = request.header(SIGNATURE), request.header(SIGNATURE_TIMESTAMP)
        if not signature or not stamp:
            raise VerificationError(
                f"connector {self.name!r}: missing X-Zendesk-Webhook-Signature and/or "
                "X-Zendesk-Webhook-Signature-Timestamp; is this request from a Zendesk webhook?"
            )
        age = self.deps.clock() - _epoch(stamp, self.name)
        if abs(age) > self.settings.tolerance:
            raise VerificationError(
                f"connector {self.name!r}: signature timestamp {stamp[:40]!r} is {abs(age):.0f} s "
                f"{'old' if age > 0 else 'in the future'}, tolerance {self.settings.tolerance:g} s "
                "(a replay, or a clock is wrong)"
            )
        expected = hmac.new(secret.encode(), stamp.encode() + request.body, hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(expected), signature.strip().encode()):
            raise VerificationError(
                f"connector {self.name!r}: X-Zendesk-Webhook-Signature does not match "
                "(is webhook_secret the signing secret of this webhook? was the body changed?)"
            )

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"connector {self.name!r}: body is not valid JSON: {exc}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("type"), str) or not data.get("id"):
            raise PayloadError(
                f"connector {self.name!r}: expected a Zendesk event (an object with 'type' and 'id'); "
                "is the webhook subscribed to Zendesk events rather than a trigger with a custom body?"
            )
        name = data["type"].removeprefix(EVENT_PREFIX)
        if name not in self.events:
            log.info("zendesk_event_ignored", connector=self.name, event_type=data["type"][:100])
            return []
        return [InboundEvent(name=name, body=data, dedupe_key=str(data["id"]))]


def _epoch(stamp: str, name: str) -> float:
    """The signature timestamp (ISO 8601 as Zendesk sends it; epoch seconds accepted) in seconds."""
    if stamp.isascii() and stamp.isdigit():
        return float(stamp)
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise VerificationError(
            f"connector {name!r}: bad X-Zendesk-Webhook-Signature-Timestamp {stamp[:40]!r}: "
            "expected ISO 8601 like 2021-03-18T19:25:00Z"
        ) from None
    if when.tzinfo is None:
        raise VerificationError(f"connector {name!r}: signature timestamp {stamp[:40]!r} has no time zone")
    return when.timestamp()
