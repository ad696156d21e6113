"""The message that travels through tieline: an immutable envelope.

A new envelope is derived for every step result (``evolve``); nothing mutates one in place,
so a retry always starts from exactly what the failed step saw.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from ulid import ULID

# Header names carried on every envelope.
CORRELATION_ID = "correlation_id"
CAUSATION_ID = "causation_id"
IDEMPOTENCY_KEY = "idempotency_key"
SOURCE = "source"  # connector name that received it, or "flow:<name>" / "topic:<name>"
EVENT = "event"  # connector event name or topic
TRACEPARENT = "traceparent"
# The vendor event a message comes from ("connector:dedupe key"), extended along topics. Two
# messages made from the same event — e.g. an ingress publish that reached the broker although
# its confirm was lost, and the vendor's retry of it — then send the same idempotency keys.
ORIGIN = "origin"


def new_id() -> str:
    """A sortable unique id (ULID, 26 characters)."""
    return str(ULID())


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message on its way through one flow.

    ``cursor`` is the index of the next instruction of the compiled flow to run; ``context``
    holds results of earlier ``to:`` steps stored with ``as:``; ``attempt`` counts tries of
    the step at ``cursor`` (1 on the first try).
    """

    id: str
    flow: str
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    cursor: int = 0
    context: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    first_seen: float = field(default_factory=time.time)
    flow_version: str = ""

    @classmethod
    def new(
        cls,
        flow: str,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        flow_version: str = "",
    ) -> Envelope:
        """A fresh envelope; its correlation id defaults to its own id."""
        mid = new_id()
        hdrs = dict(headers or {})
        hdrs.setdefault(CORRELATION_ID, mid)
        return cls(id=mid, flow=flow, body=body, headers=hdrs, flow_version=flow_version)

    def evolve(self, **changes: Any) -> Envelope:
        """A copy with ``changes`` applied (the only way to 'change' an envelope)."""
        return replace(self, **changes)

    def derive(self, flow: str, body: Any, *, event: str, flow_version: str = "") -> Envelope:
        """A child message for another flow (topic publish, split): new id, same correlation."""
        headers = {
            CORRELATION_ID: self.headers.get(CORRELATION_ID, self.id),
            CAUSATION_ID: self.id,
            SOURCE: f"flow:{self.flow}",
            EVENT: event,
        }
        if TRACEPARENT in self.headers:
            headers[TRACEPARENT] = self.headers[TRACEPARENT]
        if ORIGIN in self.headers:  # the publishing step is part of the child's origin
            headers[ORIGIN] = f"{self.headers[ORIGIN]}>{self.flow}@{self.cursor}>{event}"
        return Envelope.new(flow, body, headers, flow_version=flow_version)

    def idempotency_key(self, step: int) -> str:
        """The key passed to connectors for the ``to:`` at instruction ``step``: stable across
        retries, and for messages made from a vendor event, the same for every copy of it."""
        origin = self.headers.get(ORIGIN)
        if origin is None:
            return f"{self.id}-{step}"
        part = self.headers.get("split_index", "")
        digest = hashlib.sha256(f"{origin}|{self.flow}|{part}".encode()).hexdigest()[:26]
        return f"{digest}-{step}"

    @property
    def correlation_id(self) -> str:
        return self.headers.get(CORRELATION_ID, self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "body": self.body,
            "headers": dict(self.headers),
            "cursor": self.cursor,
            "context": dict(self.context),
            "attempt": self.attempt,
            "first_seen": self.first_seen,
            "flow_version": self.flow_version,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        return cls(
            id=data["id"],
            flow=data["flow"],
            body=data.get("body"),
            headers=dict(data.get("headers") or {}),
            cursor=int(data.get("cursor", 0)),
            context=dict(data.get("context") or {}),
            attempt=int(data.get("attempt", 1)),
            first_seen=float(data.get("first_seen", time.time())),
            flow_version=data.get("flow_version", ""),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        return cls.from_dict(orjson.loads(raw))

    def view(self) -> dict[str, Any]:
        """What mappings and JMESPath expressions see: body, headers, context."""
        return {"body": self.body, "headers": dict(self.headers), "context": dict(self.context)}
