"""The ``callcenter`` connector: a documented JSON event format for cloud call centers.

The call center POSTs one event per request, signed as a Standard Webhook
(https://www.standardwebhooks.com/: headers ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``; HMAC-SHA256 over ``id.timestamp.body``; ±5 minutes). The body is the
Standard Webhooks recommended envelope ``{"type", "timestamp", "data"}``; the event types and
their ``data`` are JSON Schemas in ``connectors/schemas/callcenter/<type>.json`` and are
described for integrators in ``docs/callcenter-events.md``.

Inbound: ``verify`` checks the signature and the timestamp window; ``parse`` returns one event
named after ``type`` whose body is the whole envelope; the dedupe key is ``webhook-id``.

Outbound (optional): ``send_event`` pushes a signed event to ``settings.url``, with
``webhook-id`` = the step's idempotency key so retries can be dropped by the receiver.

:func:`sign_event` signs a payload for operators and tests (see the curl example in the docs).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import jsonschema
import orjson

from connectors import signing
from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    InboundEvent,
    InboundRequest,
    OwnsHttpClient,
    PayloadError,
    PermanentError,
    action,
)
from connectors.http_calls import result_of
from connectors.http_calls import send as http_send

__all__ = ["EVENT_TYPES", "CallCenterConnector", "CallCenterSettings", "load_schemas", "sign_event"]

EVENT_TYPES = ("call.started", "call.completed", "transcript.segment", "recording.ready")


def load_schemas() -> dict[str, dict[str, Any]]:
    """Event type → JSON Schema of its envelope, read from the package data."""
    folder = resources.files("connectors") / "schemas" / "callcenter"
    return {name: json.loads((folder / f"{name}.json").read_text("utf-8")) for name in EVENT_TYPES}


_SCHEMAS = load_schemas()
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    """RFC 3339 with a 'T' and an offset (jsonschema's own checker needs an optional package)."""
    if not isinstance(value, str):
        return True  # the 'type' keyword reports non-strings
    parsed = datetime.fromisoformat(value)
    return "T" in value.upper() and parsed.tzinfo is not None


_VALIDATORS = {name: jsonschema.Draft202012Validator(s, format_checker=_FORMATS) for name, s in _SCHEMAS.items()}


def sign_event(
    secret: str,
    payload: Mapping[str, Any],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one signed event: ``(body, {webhook-id, webhook-timestamp, ...})``.

    ``payload`` is the envelope (``{"type", "timestamp", "data"}``); ``msg_id`` defaults to a
    random ``msg_...`` id and ``timestamp`` to now (seconds since the epoch).
    """
    body = orjson.dumps(payload)
    msg_id = msg_id or "msg_" + secrets.token_urlsafe(16)
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        signing.WEBHOOK_ID: msg_id,
        signing.WEBHOOK_TIMESTAMP: str(ts),
        signing.WEBHOOK_SIGNATURE: signing.sign(secret, msg_id, ts, body),
    }
    return body, headers


@dataclass(frozen=True, slots=True)
class CallCenterSettings:
    """The ``callcenter`` connector's settings, parsed once. The secret stays out of repr."""

    secret: str = field(repr=False)
    tolerance: float = 300.0
    url: str = ""
    timeout: float = 10.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> CallCenterSettings:
        return cls(
            secret=raw["secret"],
            tolerance=float(raw.get("tolerance", 300)),
            url=raw.get("url", ""),
            timeout=float(raw.get("timeout", 10)),
        )


def _error_text(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "(body)"
    return f"{where}: {err.message}"


class CallCenterConnector(OwnsHttpClient, Connector):
    """Signed JSON call events (call.started, call.completed, transcript.segment, recording.ready)."""

    type_name = "callcenter"
    description = "Cloud call center events over HTTP, signed as Standard Webhooks (docs/callcenter-events.md)."
    secret_fields = frozenset({"secret"})
    events = _SCHEMAS
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["secret"],
        "properties": {
            "secret": {
                "type": "string",
                "minLength": 1,
                "description": "shared signing secret 'whsec_<base64>', the same at the call center; from ${ENV}",
            },
            "tolerance": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "accepted clock difference for webhook-timestamp, seconds (default 300)",
            },
            "url": {
                "type": "string",
                "pattern": "^https?://",
                "description": "where the 'send_event' action POSTs signed events (optional)",
            },
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds, for 'send_event' (default 10)"},
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = CallCenterSettings.parse(settings)
        signing.decode_secret(self.settings.secret)  # a malformed whsec_ fails at load, not per request


    # ----- inbound ---------------------------------------------------------------------
    def verify(self, request: InboundRequest) -> None:
        signing.verify(self.settings.secret, request.headers, request.body,
                       now=self.deps.clock(), tolerance=self.settings.tolerance)

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"connector {self.name!r}: body is not valid JSON: {exc}") from None
        kind = body.get("type") if isinstance(body, dict) else None
        if kind not in _VALIDATORS:
            raise PayloadError(
                f"connector {self.name!r}: unknown event type {str(kind)[:60]!r}; "
                f"expected one of {', '.join(EVENT_TYPES)} (see docs/callcenter-events.md)"
            )
        errors = sorted(_VALIDATORS[kind].iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            detail = "; ".join(_error_text(e) for e in errors[:5])
            raise PayloadError(f"connector {self.name!r}: {kind} event is invalid: {detail}")
        return [InboundEvent(name=kind, body=body, dedupe_key=request.header(signing.WEBHOOK_ID) or None)]

    # ----- outbound --------------------------------------------------------------------
    @action(
        "send_event",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "data"],
            "properties": {
                "type": {"enum": list(EVENT_TYPES), "description": "the event type"},
                "timestamp": {"type": "string", "description": "RFC 3339; default now"},
                "data": {"type": "object", "description": "the event data, as documented for its type"},
            },
        },
        "POST a signed event to settings.url. Returns the receiver's JSON answer or {status, text}.",
    )
    async def send_event(self, payload: Mapping[str, Any], ctx: CallContext) -> Any:
        """Sign ``{type, timestamp, data}`` with the connector's secret and POST it to ``settings.url``."""
        if not self.settings.url:
            raise PermanentError(
                f"connector {self.name!r} action 'send_event' at {ctx.step}: settings.url is not set; "
                "add 'url: https://receiver.example/hooks/calls' to the connector"
            )
        now = self.deps.clock()
        envelope = {
            "type": payload["type"],
            "timestamp": payload.get("timestamp") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "data": payload["data"],
        }
        errors = list(_VALIDATORS[envelope["type"]].iter_errors(envelope))
        if errors:
            detail = "; ".join(_error_text(e) for e in errors[:5])
            raise PermanentError(f"connector {self.name!r} action 'send_event' at {ctx.step}: {detail}")
        body, headers = sign_event(self.settings.secret, envelope, msg_id=ctx.idempotency_key, timestamp=int(now))
        if ctx.traceparent:
            headers["traceparent"] = ctx.traceparent
        await self.start()
        assert self._client is not None
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        req = self._client.build_request("POST", self.settings.url, content=body, headers=headers, timeout=timeout)
        return result_of(await http_send(self._client, req, name=self.name, secrets=[self.settings.secret]))
