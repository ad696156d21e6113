"""The ``aftership`` connector: AfterShip Tracking API out, tracking webhooks in.

Looked up in AfterShip's docs and SDKs:

* API version 2025-07 (https://www.aftership.com/docs/tracking/2025-07/changelog): base URL
  ``https://api.aftership.com/tracking/2025-07``, auth header ``as-api-key``; flat request
  bodies since 2024-04; ``emails``/``smses`` replaced by ``customers[x].email``/``phone_number``
  in 2025-01; the legacy ``/trackings/{slug}/{tracking_number}`` endpoints were deprecated in
  2024-10, so a lookup by number uses ``GET /trackings?tracking_numbers=…&slug=…``.
* Responses ``{"meta": {"code", "message", "type"}, "data": …}``; errors e.g. 401/401
  ``Invalid API key.``, 400/4003 ``Tracking already exists.``, 404/4004 ``Tracking does not
  exist.``, 429/429 ``TooManyRequests`` with ``X-RateLimit-Reset`` (Unix time)
  (https://www.aftership.com/docs/tracking/quickstart/request-errors, …/rate-limit).
* Webhooks (https://www.aftership.com/docs/tracking/webhook/webhook-signature, …/specifications):
  POST JSON ``{ts, event, event_id, is_tracking_first_tag, msg}``, header
  ``aftership-hmac-sha256`` = base64 HMAC-SHA256 of the raw body under the webhook secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import structlog

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    InboundEvent,
    InboundRequest,
    OwnsHttpClient,
    PayloadError,
    PermanentError,
    RetryableError,
    VerificationError,
    action,
    classify_http_status,
)
from connectors.http_calls import client_send, redact
from connectors.http_calls import where as http_where

log = structlog.get_logger(__name__)

__all__ = ["AfterShipConnector", "AfterShipSettings", "TAGS", "sign_body"]

DEFAULT_BASE_URL = "https://api.aftership.com/tracking/2025-07"
SIGNATURE_HEADER = "aftership-hmac-sha256"
TAGS = ["Pending", "InfoReceived", "InTransit", "OutForDelivery", "AttemptFail", "Delivered",
        "AvailableForPickup", "Exception", "Expired"]
_EVENTS = {"tracking_update": "tracking.updated", "edd_revise": "tracking.edd_revised",
           "tracking_pending_time": "tracking.pending"}


def sign_body(secret: str, body: bytes) -> str:
    """The ``aftership-hmac-sha256`` value of ``body``."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class AfterShipSettings:
    """The ``aftership`` connector's settings, parsed once. Secrets stay out of repr."""

    api_key: str = field(repr=False)
    webhook_secret: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 10.0
    max_age: float = 0.0  # seconds; 0 = no check of the body's 'ts'

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> AfterShipSettings:
        return cls(
            api_key=raw["api_key"],
            webhook_secret=raw.get("webhook_secret", ""),
            base_url=str(raw.get("base_url", DEFAULT_BASE_URL)).rstrip("/"),
            timeout=float(raw.get("timeout", 10)),
            max_age=float(raw.get("max_age", 0)),
        )


_TRACKING_BODY = {
    "type": "object",
    "description": "AfterShip's webhook payload as sent (msg is the tracking object of the API version).",
    "required": ["event_id", "event", "msg"],
    "properties": {
        "event_id": {"type": "string", "description": "UUID of this webhook event (the dedupe key)"},
        "event": {"type": "string", "description": "tracking_update, edd_revise or tracking_pending_time"},
        "ts": {"type": "integer", "description": "UTC Unix time the event occurred"},
        "is_tracking_first_tag": {"type": "boolean", "description": "first update under this tag"},
        "msg": {
            "type": "object",
            "required": ["tracking_number", "slug", "tag"],
            "properties": {
                "id": {"type": "string", "description": "AfterShip tracking id"},
                "tracking_number": {"type": "string"},
                "slug": {"type": "string", "description": "courier code, e.g. dhl"},
                "tag": {"enum": TAGS, "description": "delivery status"},
                "subtag": {"type": "string", "description": "e.g. InTransit_001, Exception_011"},
                "subtag_message": {"type": "string"},
                "order_id": {"type": ["string", "null"]},
                "title": {"type": ["string", "null"]},
                "checkpoints": {"type": "array", "description": "carrier scan events, oldest first"},
            },
        },
    },
}

_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tracking_number"],
    "properties": {
        "tracking_number": {"type": "string", "minLength": 1, "maxLength": 100},
        "slug": {"type": "string", "pattern": "^[a-z0-9-]+$", "description": "courier code; detected if omitted"},
        "title": {"type": "string", "maxLength": 512},
        "order_id": {"type": "string", "maxLength": 256},
        "order_id_path": {"type": "string"},
        "order_number": {"type": "string"},
        "custom_fields": {"type": "object", "additionalProperties": {"type": "string"}},
        "language": {"type": "string", "pattern": "^[a-z]{2}$", "description": "ISO 639-1, for notifications"},
        "customers": {"type": "array", "maxItems": 10, "items": {"type": "object"},
                      "description": "[{name, email, phone_number, role, language}]"},
        "emails": {"type": "array", "maxItems": 3, "items": {"type": "string", "format": "email"},
                   "description": "shorthand: each becomes customers[].email"},
        "smses": {"type": "array", "maxItems": 3, "items": {"type": "string", "pattern": r"^\+[0-9]{6,20}$"},
                  "description": "shorthand: each becomes customers[].phone_number"},
    },
}

_GET = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["id"]}, {"required": ["slug", "tracking_number"]}],
    "properties": {
        "id": {"type": "string", "minLength": 1, "description": "AfterShip tracking id"},
        "slug": {"type": "string", "minLength": 1},
        "tracking_number": {"type": "string", "minLength": 1},
    },
}


def _summary(tracking: Mapping[str, Any]) -> dict[str, Any]:
    """The fields flows use most, plus the whole tracking object as ``raw``."""
    checkpoints = tracking.get("checkpoints") or []
    return {
        "id": tracking.get("id"),
        "tracking_number": tracking.get("tracking_number"),
        "slug": tracking.get("slug"),
        "tag": tracking.get("tag"),
        "subtag": tracking.get("subtag"),
        "url": tracking.get("courier_tracking_link") or tracking.get("aftership_tracking_url"),
        "last_checkpoint": checkpoints[-1] if checkpoints else None,
        "raw": dict(tracking),
    }


class AfterShipConnector(OwnsHttpClient, Connector):
    """AfterShip Tracking: create and look up trackings; receive tracking webhooks."""

    type_name = "aftership"
    description = "AfterShip Tracking API (create/get trackings) and its signed tracking webhooks."
    secret_fields = frozenset({"api_key", "webhook_secret"})
    events = {name: _TRACKING_BODY for name in _EVENTS.values()}
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["api_key"],
        "properties": {
            "api_key": {"type": "string", "minLength": 1, "description": "AfterShip API key (as-api-key); from ${ENV}"},
            "webhook_secret": {"type": "string", "minLength": 1,
                               "description": "Settings > Webhooks secret, to verify webhooks; from ${ENV}"},
            "base_url": {"type": "string", "pattern": "^https?://",
                         "description": f"API base including the version (default {DEFAULT_BASE_URL})"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds (default 10)"},
            "max_age": {"type": "number", "minimum": 0,
                        "description": "refuse webhooks whose 'ts' is older, seconds (default 0: off; "
                                       "AfterShip's retries keep the original ts)"},
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = AfterShipSettings.parse(settings)


    # ----- inbound ---------------------------------------------------------------------
    def verify(self, request: InboundRequest) -> None:
        if not self.settings.webhook_secret:
            raise VerificationError(f"connector {self.name!r}: settings.webhook_secret is not set; "
                                    "copy it from AfterShip Settings > Webhooks")
        given = request.header(SIGNATURE_HEADER)
        if not given:
            raise VerificationError(f"connector {self.name!r}: missing header aftership-hmac-sha256")
        expected = sign_body(self.settings.webhook_secret, request.body)
        if not hmac.compare_digest(expected.encode(), given.strip().encode()):
            raise VerificationError(f"connector {self.name!r}: aftership-hmac-sha256 does not match the body "
                                    "(is the webhook secret right?)")
        if self.settings.max_age:
            ts = _loads(request.body, self.name).get("ts")
            age = self.deps.clock() - ts if isinstance(ts, int | float) else None
            if age is None or age > self.settings.max_age:
                raise VerificationError(f"connector {self.name!r}: webhook 'ts' is missing or older than "
                                        f"max_age {self.settings.max_age:g} s (a replay?)")

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        body = _loads(request.body, self.name)
        name = _EVENTS.get(str(body.get("event")))
        if name is None:
            log.info("aftership_event_ignored", connector=self.name, event_name=str(body.get("event"))[:60])
            return []
        msg = body.get("msg")
        missing = [k for k in ("tracking_number", "slug", "tag") if not isinstance(msg, dict) or k not in msg]
        if not isinstance(body.get("event_id"), str) or missing:
            detail = "event_id" if not missing else ", ".join(f"msg.{k}" for k in missing)
            raise PayloadError(f"connector {self.name!r}: AfterShip webhook lacks {detail}")
        return [InboundEvent(name, body, dedupe_key=body["event_id"])]

    # ----- outbound --------------------------------------------------------------------
    @action("create_tracking", _CREATE,
            "Create a tracking. Returns {id, tracking_number, slug, tag, subtag, url, last_checkpoint, raw}.")
    async def create_tracking(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """POST /trackings. ``emails``/``smses`` are sent as ``customers`` (API 2025-01 and later)."""
        body = {k: v for k, v in payload.items() if k not in ("emails", "smses")}
        customers = list(payload.get("customers") or [])
        customers += [{"email": e} for e in payload.get("emails") or []]
        customers += [{"phone_number": p} for p in payload.get("smses") or []]
        if customers:
            body["customers"] = customers
        data = await self._call("POST", "/trackings", ctx, "create_tracking", json=body)
        return _summary(_tracking(data))

    @action("get_tracking", _GET,
            "Get a tracking by id, or by slug + tracking_number. Returns the same shape as create_tracking.")
    async def get_tracking(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """GET /trackings/{id}, or GET /trackings?tracking_numbers=…&slug=… (first match)."""
        if "id" in payload:
            data = await self._call("GET", f"/trackings/{quote(payload['id'], safe='')}", ctx, "get_tracking")
            return _summary(_tracking(data))
        query = {"tracking_numbers": payload["tracking_number"], "slug": payload["slug"]}
        data = await self._call("GET", "/trackings", ctx, "get_tracking", params=query)
        found = (data or {}).get("trackings") or []
        if not found:
            raise PermanentError(f"connector {self.name!r} action 'get_tracking' at {ctx.step}: no tracking "
                                 f"{payload['slug']}/{payload['tracking_number']} (create it first)", status=404)
        return _summary(found[0])

    async def _call(self, method: str, path: str, ctx: CallContext, action_name: str, **kw: Any) -> Any:
        await self.start()
        assert self._client is not None
        headers = {"as-api-key": self.settings.api_key}
        if ctx.traceparent:
            headers["traceparent"] = ctx.traceparent
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        if "json" in kw:
            kw = {**kw, "content": orjson.dumps(kw.pop("json"))}
            headers["content-type"] = "application/json"
        req = self._client.build_request(method, self.settings.base_url + path, headers=headers,
                                         timeout=timeout, **kw)
        # Not connectors.http.send: a 429 here says when to retry in X-RateLimit-Reset, a header
        # send()'s classification does not see.
        target = f"connector {self.name!r} action {action_name!r} at {ctx.step}: {method} {http_where(req.url)}"
        secrets = [self.settings.api_key, self.settings.webhook_secret]
        try:
            response = await client_send(self._client, req)
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{target}: timed out ({type(exc).__name__})") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise RetryableError(f"{target}: {type(exc).__name__}: {redact(str(exc), secrets) or 'no detail'}") from None
        except httpx.HTTPError as exc:  # bad URL or scheme: a retry cannot help
            raise PermanentError(f"{target}: {type(exc).__name__}: {redact(str(exc), secrets) or 'no detail'}") from None
        if response.status_code >= 400:
            raise self._vendor_error(response, target)
        return _loads(response.content, self.name).get("data")

    def _vendor_error(self, response: httpx.Response, target: str) -> Exception:
        """AfterShip's meta.code/type/message in the message; 429 honours Retry-After or X-RateLimit-Reset."""
        try:
            meta = orjson.loads(response.content).get("meta") or {}
        except (orjson.JSONDecodeError, AttributeError):
            meta = {}
        if isinstance(meta, dict) and meta.get("message"):
            detail = f"AfterShip {meta.get('code')} {meta.get('type', '')}: {meta['message']}"
        else:
            detail = redact(response.text[:300], [self.settings.api_key])
        err = classify_http_status(response.status_code, response.headers.get("retry-after"), detail)
        err.args = (f"{target}: {err.args[0]}",)
        if isinstance(err, RetryableError) and err.retry_after is None:
            reset = response.headers.get("x-ratelimit-reset") or response.headers.get("as-ratelimit-reset") or ""
            if reset.isdigit():
                err.retry_after = max(0.0, float(reset) - self.deps.clock())
        return err


def _tracking(data: Any) -> Mapping[str, Any]:
    """``data`` is the tracking (API 2024-07+) or ``{"tracking": …}`` (older versions)."""
    if isinstance(data, Mapping) and isinstance(data.get("tracking"), Mapping):
        return data["tracking"]
    return data if isinstance(data, Mapping) else {}


def _loads(body: bytes, name: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"connector {name!r}: body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"connector {name!r}: body is not a JSON object")
    return data
