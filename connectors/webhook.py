"""The ``webhook`` connector: JSON in from any system, signed Standard Webhooks out.

Inbound: ``verify`` checks a Standard Webhooks or GitHub signature (or nothing), ``parse``
turns the JSON body into one event (or one per item of a JSON array). The event name is
``received`` unless ``event_field`` names a field of the body; then only the names listed in
``events`` are taken (others are acknowledged and dropped, with a log line). The dedupe key
is ``dedupe_field`` of the body, else the ``webhook-id`` (or ``X-GitHub-Delivery``) header.

Outbound: the ``send`` action POSTs the payload to ``url`` signed as a Standard Webhook, with
``webhook-id`` = the step's idempotency key, so a retry carries the same id and the receiver
can drop the repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

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

log = structlog.get_logger(__name__)

_MISSING = object()


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The ``webhook`` connector's settings, parsed once. The secret stays out of repr."""

    verify: str = "none"  # none | standard | github
    secret: str = field(default="", repr=False)
    tolerance: float = 300.0
    event_field: tuple[str, ...] = ()  # dotted key split on '.'
    events: frozenset[str] = frozenset()
    dedupe_field: tuple[str, ...] = ()
    url: str = ""
    timeout: float = 10.0
    format: str = "json"  # json | xml (legacy call centers, government systems)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> WebhookSettings:
        return cls(
            verify=raw.get("verify", "none"),
            secret=raw.get("secret", ""),
            tolerance=float(raw.get("tolerance", 300)),
            event_field=tuple(raw["event_field"].split(".")) if raw.get("event_field") else (),
            events=frozenset(raw.get("events") or ()),
            dedupe_field=tuple(raw["dedupe_field"].split(".")) if raw.get("dedupe_field") else (),
            url=raw.get("url", ""),
            timeout=float(raw.get("timeout", 10)),
            format=raw.get("format", "json"),
        )


def lookup(body: Any, parts: tuple[str, ...]) -> Any:
    """``body`` followed along ``parts`` (``("data", "id")``); ``_MISSING`` if any step is absent."""
    for part in parts:
        if not isinstance(body, Mapping) or part not in body:
            return _MISSING
        body = body[part]
    return body


class WebhookConnector(OwnsHttpClient, Connector):
    """Receive JSON webhooks from any system; send signed Standard Webhooks."""

    type_name = "webhook"
    description = "Inbound JSON webhooks (Standard Webhooks / GitHub signatures); signed outbound webhooks."
    secret_fields = frozenset({"secret"})
    events = {"received": {}}
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "verify": {"enum": ["none", "standard", "github"], "description": "signature check (default none)"},
            "format": {"enum": ["json", "xml"], "description": "body format (default json); XML is parsed "
                       "safely: entity expansion, external entities and DTDs are refused"},
            "secret": {"type": "string", "minLength": 1, "description": "whsec_... (standard) or the raw GitHub secret"},
            "tolerance": {"type": "number", "exclusiveMinimum": 0, "description": "timestamp window, seconds (default 300)"},
            "event_field": {"type": "string", "pattern": r"^[^.]+(\.[^.]+)*$", "description": "dotted key naming the event"},
            "events": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "uniqueItems": True,
                "description": "event names accepted when event_field is set (others are dropped)",
            },
            "dedupe_field": {"type": "string", "pattern": r"^[^.]+(\.[^.]+)*$", "description": "dotted key of the event id"},
            "url": {"type": "string", "pattern": "^https?://", "description": "where the 'send' action delivers"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds, for 'send' (default 10)"},
        },
        "dependentRequired": {"event_field": ["events"], "events": ["event_field"], "url": ["secret"]},
        "if": {"required": ["verify"], "properties": {"verify": {"enum": ["standard", "github"]}}},
        "then": {"required": ["secret"]},
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = WebhookSettings.parse(settings)
        if self.settings.verify == "standard" or self.settings.url:
            signing.decode_secret(self.settings.secret)  # a malformed whsec_ fails at load, not per call

    @classmethod
    def event_names_for(cls, settings: Mapping[str, Any]) -> set[str]:
        """The events an instance can emit: they depend on its settings, not only its type."""
        return set(settings.get("events") or ()) if settings.get("event_field") else {"received"}

    def event_names(self) -> set[str]:
        return self.event_names_for({"event_field": self.settings.event_field, "events": self.settings.events})


    # ----- inbound ---------------------------------------------------------------------
    def verify(self, request: InboundRequest) -> None:
        mode = self.settings.verify
        if mode == "standard":
            signing.verify(self.settings.secret, request.headers, request.body,
                           now=self.deps.clock(), tolerance=self.settings.tolerance)
        elif mode == "github":
            signing.verify_github(self.settings.secret, request.headers, request.body)

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        if self.settings.format == "xml":
            from bus.security.xmlsafe import parse_xml  # XmlError is a PayloadError: 400

            data = parse_xml(request.body, strip_namespaces=True)
            return [e for e in [self._event(data, request.header(signing.WEBHOOK_ID) or None, "body")] if e]
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(
                f"connector {self.name!r}: body is not valid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
            ) from None
        header_key = request.header(signing.WEBHOOK_ID) or request.header("x-github-delivery") or None
        if not isinstance(data, list):
            return [e for e in [self._event(data, header_key, "body")] if e]
        keys = [f"{header_key}#{i}" if header_key else None for i in range(len(data))]
        return [e for i, item in enumerate(data) if (e := self._event(item, keys[i], f"item {i}"))]

    def _event(self, body: Any, header_key: str | None, where: str) -> InboundEvent | None:
        name = "received"
        if self.settings.event_field:
            found = lookup(body, self.settings.event_field)
            dotted = ".".join(self.settings.event_field)
            if not isinstance(found, str) or not found:
                raise PayloadError(
                    f"connector {self.name!r}: {where} has no string field {dotted!r} "
                    "(settings.event_field) to name the event"
                )
            if found not in self.settings.events:
                log.info("webhook_event_ignored", connector=self.name, event_name=found[:100])
                return None
            name = found
        key = header_key
        if self.settings.dedupe_field:
            value = lookup(body, self.settings.dedupe_field)
            key = str(value) if value is not _MISSING and value is not None else None
        return InboundEvent(name=name, body=body, dedupe_key=key)

    # ----- outbound --------------------------------------------------------------------
    @action("send", {"type": "object"}, "POST the payload to settings.url as a signed Standard Webhook.")
    async def send(self, payload: Mapping[str, Any], ctx: CallContext) -> Any:
        if not self.settings.url:
            raise PermanentError(
                f"connector {self.name!r} action 'send' at {ctx.step}: settings.url is not set; "
                "add 'url: https://receiver.example/hooks' to the connector"
            )
        await self.start()
        assert self._client is not None
        body = orjson.dumps(payload)
        timestamp = int(self.deps.clock())
        headers = {
            "content-type": "application/json",
            signing.WEBHOOK_ID: ctx.idempotency_key,
            signing.WEBHOOK_TIMESTAMP: str(timestamp),
            signing.WEBHOOK_SIGNATURE: signing.sign(self.settings.secret, ctx.idempotency_key, timestamp, body),
        }
        if ctx.traceparent:
            headers["traceparent"] = ctx.traceparent
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        req = self._client.build_request("POST", self.settings.url, content=body, headers=headers, timeout=timeout)
        return result_of(await http_send(self._client, req, name=self.name, secrets=[self.settings.secret]))
