"""Every error tieline raises, in one tree.

    TielineError
    ├── ConfigError            flows.yaml / mappings are invalid; carries every ConfigIssue found
    ├── MappingError           a mapping failed on a message (bad input shape, function error)
    ├── ConnectorError         raised by connectors; the runner decides retry vs dead letter by class
    │   ├── RetryableError     timeouts, connection errors, 429, 5xx; may carry retry_after seconds
    │   └── PermanentError     4xx, schema violations: retrying cannot help
    ├── InboundError           a request to the ingress is refused
    │   ├── VerificationError  missing/wrong/stale signature          → 401
    │   └── PayloadError       unparsable body or schema violation    → 400
    └── TransportError         the transport cannot take or keep a message
        ├── BackpressureError  the backlog is over its bound           → 503 + Retry-After
        └── LeaseLostError     another process took over a message this one held too long

Names end in ``Error``; nothing catches ``Exception`` and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass


class TielineError(Exception):
    """Root of every error tieline raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file, with where it is and (maybe) a fix."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # YAML path, e.g. flows.returns.steps[2].to
    message: str
    hint: str | None = None  # "did you mean 'tickets'?"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text} (did you mean {self.hint}?)" if self.hint else text


class ConfigError(TielineError):
    """The configuration is invalid; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.column))
        super().__init__("\n".join(str(i) for i in self.issues))


class MappingError(TielineError):
    """A mapping could not be applied to a message."""


class ConnectorError(TielineError):
    """Base of connector failures. Connectors raise one of the two subclasses."""

    def __init__(self, message: str, *, status: int | None = None, detail: object = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class RetryableError(ConnectorError):
    """Trying again later may succeed. ``retry_after`` (seconds) comes from the vendor if it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object):
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """Trying again cannot succeed; the message goes to the dead-letter queue."""


class InboundError(TielineError):
    """A request to the ingress is refused; ``status`` is the HTTP status to answer."""

    status = 400


class VerificationError(InboundError):
    """The request's signature is missing, wrong or outside the timestamp window."""

    status = 401


class PayloadError(InboundError):
    """The request body cannot be parsed or does not match the event's schema."""

    status = 400


class TransportError(TielineError):
    """The transport could not take or keep a message."""


class BackpressureError(TransportError):
    """The backlog is over its configured bound; callers should answer 503 with Retry-After."""

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class LeaseLostError(TransportError):
    """A process sharing the embedded file held a message past its lease and another process
    claimed it; this one's ending is not recorded (the other run decides the outcome)."""
