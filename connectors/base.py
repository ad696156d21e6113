"""The connector contract: what a connector type declares and implements.

A connector *type* is a subclass of :class:`Connector` registered under the entry-point group
``tieline.connectors``. A connector *instance* is one entry under ``connectors:`` in flows.yaml.

A type declares, next to its code:

* ``type_name`` — stable forever, the name used in ``type:``;
* ``config_schema`` — JSON Schema of its settings (``additionalProperties: false``);
* ``events`` — inbound event name → JSON Schema of the event body;
* actions — ``async`` methods decorated with ``@action(name, schema)``;
* ``verify(request)`` / ``parse(request)`` for inbound HTTP (webhooks).

Failures are raised as :class:`RetryableError` or :class:`PermanentError`; nothing else
should escape an action (an unexpected exception is treated as retryable by the runner and
reported with its class name).

Connectors never import the runtime. Their I/O dependencies (HTTP client, clock) come in
through the constructor so tests can inject fakes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
import jsonschema

from bus.errors import (
    ConnectorError,
    InboundError,
    PayloadError,
    PermanentError,
    RetryableError,
    VerificationError,
)
from bus.schema_check import SchemaCheck

__all__ = [
    "Action",
    "CallContext",
    "Connector",
    "ConnectorDeps",
    "ConnectorError",
    "InboundError",
    "InboundEvent",
    "InboundRequest",
    "PayloadError",
    "PermanentError",
    "RetryableError",
    "VerificationError",
    "action",
]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """An HTTP request as a connector sees it: no framework types.

    ``headers`` keys are lower-case. ``url`` is the public URL the vendor called (connectors
    that sign over the URL, like Twilio, may be configured with their own public URL instead).
    """

    method: str
    url: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    client_ip: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One event parsed from an inbound request.

    ``dedupe_key`` is the vendor's event id (or a key built from the payload); a repeat within
    the dedupe window is answered 200 and not processed again.
    """

    name: str
    body: Any
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class CallContext:
    """What an action knows about the message it is called for."""

    message_id: str
    flow: str
    step: str  # e.g. "steps[2]" — for errors and logs
    idempotency_key: str  # stable across retries of this step of this message
    attempt: int = 1
    correlation_id: str = ""
    traceparent: str | None = None
    timeout: float | None = None  # seconds left before the step's deadline, if any


@dataclass(slots=True)
class ConnectorDeps:
    """I/O dependencies handed to every connector; tests pass fakes through here."""

    http: httpx.AsyncClient | None = None
    clock: Callable[[], float] = time.time


@dataclass(frozen=True, slots=True)
class Action:
    """A declared outbound action: its name, its input JSON Schema and the bound coroutine name."""

    name: str
    input_schema: Mapping[str, Any]
    method: str
    description: str = ""


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def action(name: str, schema: Mapping[str, Any], description: str = "") -> Callable[[F], F]:
    """Declare an ``async def method(self, payload, ctx)`` as the outbound action ``name``."""

    def mark(fn: F) -> F:
        fn.__tieline_action__ = (name, schema, description)  # type: ignore[attr-defined]
        return fn

    return mark


class Connector:
    """Base class of every connector type. Subclasses set the class attributes below."""

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_schema: ClassVar[Mapping[str, Any]] = {"type": "object", "additionalProperties": False}
    events: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    actions: ClassVar[Mapping[str, Action]] = {}
    # Settings that hold secrets: never shown in repr, logs or errors.
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        found = dict(getattr(cls, "actions", {}))
        for attr, fn in vars(cls).items():
            marked = getattr(fn, "__tieline_action__", None)
            if marked:
                name, schema, description = marked
                found[name] = Action(name, schema, attr, description)
        cls.actions = found
        cls._input_validators: dict[str, jsonschema.protocols.Validator] = {}

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        """``settings`` have been validated against ``config_schema``; parse them once here."""
        self.name = name
        self.deps = deps or ConnectorDeps()

    def __repr__(self) -> str:  # never shows settings: they may hold secrets
        return f"<{type(self).__name__} {self.name!r} type={self.type_name!r}>"

    # ----- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Open clients, warm caches. Called once before the first call."""

    async def close(self) -> None:
        """Release what ``start`` opened."""

    async def health(self) -> dict[str, Any]:
        """A small health report for the management API; override to probe the vendor."""
        return {"status": "unknown"}

    # ----- inbound ---------------------------------------------------------------------
    @classmethod
    def event_names_for(cls, settings: Mapping[str, Any]) -> set[str]:
        """Event names an instance with these (schema-valid) settings can emit.

        Most types have a fixed set (``events``); generic ones like ``webhook`` let operators
        declare names in settings and override this, so the loader can check ``from:``.
        """
        return set(cls.events)

    def event_names(self) -> set[str]:
        return set(type(self).events)

    def verify(self, request: InboundRequest) -> None:
        """Raise VerificationError unless the request is authentic. Default: accept."""

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        """Turn a verified request into events. Raise PayloadError on a malformed body."""
        raise PayloadError(f"connector type {self.type_name!r} receives no webhooks")

    # ----- outbound --------------------------------------------------------------------
    async def call(self, action_name: str, payload: Any, ctx: CallContext) -> Any:
        """Validate ``payload`` against the action's schema, then run the action."""
        spec = self.actions.get(action_name)
        if spec is None:
            raise PermanentError(f"connector {self.name!r} has no action {action_name!r}")
        self.check_input(spec, payload)
        return await getattr(self, spec.method)(payload, ctx)

    @classmethod
    def check_input(cls, spec: Action, payload: Any) -> None:
        """A payload that breaks the action's schema is a permanent error naming the field."""
        validator = cls._input_validators.get(spec.name)
        if validator is None:
            validator = cls._input_validators[spec.name] = SchemaCheck(spec.input_schema)
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
        if errors:
            parts = []
            for err in errors[:5]:
                where = ".".join(str(p) for p in err.absolute_path) or "(payload)"
                parts.append(f"{where}: {err.message}")
            raise PermanentError(f"input of action {spec.name!r} is invalid: " + "; ".join(parts))


class OwnsHttpClient:
    """``start``/``close`` for connectors that call out with httpx: the runtime's shared client
    (``deps.http``, which guards private addresses) when given, else one of their own built with
    ``settings.timeout``. With ``settings.verify_tls`` false, the connector owns a sibling of the
    shared client that skips certificate checks and keeps its address guard (a client without
    ``unverified()``, such as a test double, is used as it is). Mix it in before
    :class:`Connector`; use ``self._client``."""

    _client: httpx.AsyncClient | None = None
    _owns_client: bool = False

    async def start(self) -> None:
        if self._client is None:
            shared = self.deps.http  # type: ignore[attr-defined]
            settings = getattr(self, "settings", None)
            verify = getattr(settings, "verify_tls", True)
            if shared is None:
                from bus.security.aiohttp_transport import aiohttp_client

                timeout = getattr(settings, "timeout", 10.0)
                self._client, self._owns_client = aiohttp_client(verify=verify, timeout=timeout), True
            elif not verify and hasattr(shared, "unverified"):
                self._client, self._owns_client = shared.unverified(), True
            else:
                self._client, self._owns_client = shared, False

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self._client, self._owns_client = None, False


def classify_http_status(status: int, retry_after: str | None, text: str) -> ConnectorError:
    """The standard mapping of an HTTP failure status to an error class.

    429 and 5xx (and 408) are retryable, honouring ``Retry-After`` in seconds or HTTP-date;
    any other 4xx is permanent.
    """
    message = f"HTTP {status}: {text[:300]}" if text else f"HTTP {status}"
    if status in (408, 425, 429) or status >= 500:
        return RetryableError(message, retry_after=parse_retry_after(retry_after), status=status)
    return PermanentError(message, status=status)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())
