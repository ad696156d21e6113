"""The typed configuration model. Everything here is parsed once, at load, and frozen.

The loader (``bus/config/loader.py``) builds these from YAML; nothing else in tieline reads
raw configuration dicts. Each node keeps its :class:`Location` so runtime errors can point at
the YAML line that declared it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NOWHERE = Location("<none>", 0, 0)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 256 * 1024
    public_url: str | None = None  # e.g. https://bus.example.com — for URL-signing vendors
    tls_cert: str | None = None  # PEM files: serve HTTPS
    tls_key: str | None = None
    tls_min_version: str = "1.3"
    rate_limit: Rate | None = None  # per client and route


@dataclass(frozen=True, slots=True)
class Settings:
    transport: Literal["embedded", "rabbitmq"] = "embedded"
    data_dir: Path = Path("data")
    http: HttpSettings = field(default_factory=HttpSettings)
    backlog_limit: int = 100_000  # non-terminal messages before ingress answers 503
    dedupe_window: float = 7 * 86400.0  # seconds an inbound dedupe key is remembered
    retention: float = 7 * 86400.0  # seconds finished messages and their ledger are kept
    sync: Literal["full", "normal"] = "full"  # SQLite synchronous mode for the embedded transport
    workers: int = 0  # worker processes `tieline run` starts beside its server (0: deliver itself)
    sandbox: bool = False
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_prefix: str = "tieline"  # RabbitMQ names and Redis keys start with it
    outbound_allow: tuple[str, ...] = ()  # private hosts/CIDRs connectors may call (SSRF guard)
    follow_redirects: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded by default: 5 attempts, 1s doubling to at most 5 min, full jitter, 1 h deadline."""

    attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: Literal["full", "none"] = "full"
    deadline: float | None = 3600.0  # seconds since first_seen after which no retry is scheduled


@dataclass(frozen=True, slots=True)
class DeadLetterRule:
    enabled: bool = True  # False: an exhausted message is dropped, recorded as 'dead' in the ledger


@dataclass(frozen=True, slots=True)
class MappingRef:
    """A mapping used by a step: by name (from mappings/) or inline (``name`` is synthesised)."""

    name: str
    inline: Mapping[str, Any] | None = None
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: float


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Open after ``failure_ratio`` of at least ``min_calls`` calls in ``window`` s failed retryably."""

    failure_ratio: float = 0.5
    window: float = 30.0
    min_calls: int = 10
    cooldown: float = 30.0
    half_open_calls: int = 1


@dataclass(frozen=True, slots=True)
class IngressRule:
    """Checks on /hooks/<connector> before the connector verifies the signature."""

    allow_ips: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    api_key_header: str = "x-api-key"


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    name: str
    type: str
    settings: Mapping[str, Any]  # validated against the type's config_schema; may hold secrets
    loc: Location = NOWHERE
    rate: Rate | None = None  # calls to this connector are throttled (shared by every flow)
    circuit_breaker: BreakerPolicy | None = None
    ingress: IngressRule | None = None  # extra checks on its webhook route


# ----- flow sources -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventSource:
    connector: str
    event: str
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class TopicSource:
    topic: str
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class HttpSource:  # sync API flows (issue: advanced flows); also POST /flows/{name} for any flow
    method: str
    path: str
    loc: Location = NOWHERE


Source = EventSource | TopicSource | HttpSource


# ----- steps --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValidateStep:
    schema: Mapping[str, Any]
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class MapStep:
    mapping: MappingRef
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class FilterStep:
    expr: str  # JMESPath; falsy result stops the message as 'filtered'
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class Branch:
    when: str | None  # None for 'otherwise'
    steps: tuple[Step, ...]
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class RouteStep:
    branches: tuple[Branch, ...]  # ordered; at most one 'otherwise', last
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class Compensation:
    """The undo of a ``to:`` step (sagas): its payload mapping also sees ``context.<as>``."""

    connector: str
    action: str
    mapping: MappingRef | None = None
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class ToStep:
    connector: str
    action: str
    mapping: MappingRef | None = None  # payload; default: the current body
    as_: str | None = None  # store the result in context[as_]
    retry: RetryPolicy | None = None  # overrides the flow's policy for this step
    loc: Location = NOWHERE
    compensate: Compensation | None = None
    cache: float | None = None  # sync flows: seconds a result is reused for the same payload


@dataclass(frozen=True, slots=True)
class PublishStep:
    topic: str
    mapping: MappingRef | None = None  # body of the published event; default: the current body
    delay: float | None = None  # seconds
    loc: Location = NOWHERE
    delay_expr: str | None = None  # JMESPath giving the delay (seconds or a duration string)
    once_per: str | None = None  # JMESPath key: publish only the first message per key (dedupe window)


@dataclass(frozen=True, slots=True)
class ReplyStep:
    """Sync flows: end the flow and answer the HTTP request with the mapped body."""

    status: int = 200
    mapping: MappingRef | None = None  # default: the current body
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class SplitStep:
    """One child message per item of the list ``expr`` gives, continuing at the next step."""

    expr: str
    loc: Location = NOWHERE


Step = ValidateStep | MapStep | FilterStep | RouteStep | ToStep | PublishStep | ReplyStep | SplitStep


@dataclass(frozen=True, slots=True)
class Canary:
    """Send ``percent`` % of the flow's messages (by hash of ``key``) to flow ``flow`` instead."""

    flow: str
    percent: float
    key: str
    loc: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    source: Source
    steps: tuple[Step, ...]
    when: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: DeadLetterRule = field(default_factory=DeadLetterRule)
    concurrency: int = 16
    enabled: bool = True
    version: str = ""  # short hash of the flow's definition and the mappings it uses
    loc: Location = NOWHERE
    canary: Canary | None = None
    timeout: float | None = None  # sync flows: seconds before the request answers 504


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    connectors: Mapping[str, ConnectorConfig]
    flows: Mapping[str, Flow]
    mappings: Mapping[str, Any]  # name → compiled bus.mapping.Mapping
    source: Path  # the flows.yaml it came from
    security: Mapping[str, Any] | None = None  # interpolated security: section (bus/security)
