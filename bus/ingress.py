"""Ingress: turn inbound events into durable messages for the flows subscribed to them.

Framework-free so the HTTP layer, the CLI (`tieline send`) and tests all enter the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import structlog
from jmespath.exceptions import JMESPathError

from bus.canary import route_variants
from bus.envelope import EVENT, ORIGIN, SOURCE, TRACEPARENT, Envelope
from bus.errors import MappingError, PayloadError
from bus.flow import CompiledFlow
from bus.observe import Observer
from bus.schema_check import SchemaCheck
from bus.transport.base import Transport
from connectors.base import Connector, InboundEvent

log = structlog.get_logger("tieline.ingress")


@dataclass(slots=True)
class Admission:
    """What happened to one inbound event."""

    event: str
    accepted: list[str] = field(default_factory=list)  # new message ids
    duplicate_of: list[str] | None = None  # set when the dedupe key was seen before
    unrouted: bool = False  # no enabled flow subscribes to it (or every `when:` said no)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "accepted": self.accepted}
        if self.duplicate_of is not None:
            out["duplicate_of"] = self.duplicate_of
        if self.unrouted:
            out["unrouted"] = True
        return out


class Ingress:
    def __init__(
        self,
        flows: Mapping[str, CompiledFlow],
        connectors: Mapping[str, Connector],
        transport: Transport,
        observer: Observer | None = None,
    ):
        self.observer = observer or Observer()
        self.flows = flows
        self.connectors = connectors
        self.transport = transport
        self.by_event: dict[tuple[str, str], list[CompiledFlow]] = {}
        for cf in flows.values():
            src = cf.flow.source
            if hasattr(src, "connector") and cf.flow.enabled:
                self.by_event.setdefault((src.connector, src.event), []).append(cf)
        self._event_validators: dict[tuple[str, str], Any] = {}
        self.disabled: set[str] = set()  # flows an operator switched off: no new messages

    def check_event(self, connector: Connector, event: InboundEvent) -> None:
        """Validate the event body against the schema its connector type declares for it."""
        schema = connector.events.get(event.name)
        if not schema:
            return
        key = (connector.type_name, event.name)
        validator = self._event_validators.get(key)
        if validator is None:
            validator = self._event_validators[key] = SchemaCheck(schema)
        err = jsonschema.exceptions.best_match(validator.iter_errors(event.body))
        if err is not None:
            where = "body" + "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
            )
            raise PayloadError(f"event {event.name!r}: {where}: {err.message}")

    async def admit(
        self, connector_name: str, event: InboundEvent, headers: Mapping[str, str] | None = None
    ) -> Admission:
        """Store one event as a message per subscribed flow, atomically, deduplicated."""
        hdrs = {SOURCE: connector_name, EVENT: event.name}
        if event.dedupe_key:
            hdrs[ORIGIN] = f"{connector_name}:{event.dedupe_key}"
        if headers and headers.get(TRACEPARENT):
            hdrs[TRACEPARENT] = headers[TRACEPARENT]
        envelopes = []
        for cf in self.by_event.get((connector_name, event.name), ()):
            if cf.name in self.disabled:
                continue
            env = Envelope.new(cf.name, event.body, hdrs, flow_version=cf.version)
            if cf.when is not None and not _matches(cf, env):
                continue
            envelopes.append(env)
        envelopes = route_variants(self.flows, envelopes)
        # One correlation id for all flows fed by the same event.
        if len(envelopes) > 1:
            corr = envelopes[0].id
            envelopes = [e.evolve(headers={**e.headers, "correlation_id": corr}) for e in envelopes]
        if not envelopes:
            log.info("event_unrouted", connector=connector_name, event_name=event.name)
            return Admission(event.name, unrouted=True)
        dedupe = f"{connector_name}:{event.dedupe_key}" if event.dedupe_key else None
        result = await self.transport.publish(envelopes, dedupe_key=dedupe)
        if result.duplicate_of is None:
            for e in envelopes:
                self.observer.received(e.flow)
        return Admission(event.name, accepted=result.accepted, duplicate_of=result.duplicate_of)

    async def admit_to_flow(
        self, flow_name: str, body: Any, headers: Mapping[str, str] | None = None
    ) -> str:
        """Put a body straight into one flow (``POST /flows/{flow}``, ``tieline send``)."""
        cf = self.flows[flow_name]
        hdrs = {SOURCE: "api", EVENT: f"flow:{flow_name}"}
        if headers and headers.get(TRACEPARENT):
            hdrs[TRACEPARENT] = headers[TRACEPARENT]
        env = Envelope.new(flow_name, body, hdrs, flow_version=cf.version)
        await self.transport.publish([env])
        self.observer.received(flow_name)
        return env.id


def _matches(cf: CompiledFlow, env: Envelope) -> bool:
    try:
        return cf.when.truthy(env.view())
    except (MappingError, JMESPathError) as e:
        log.warning("when_failed", flow=cf.name, error=str(e))
        return False
