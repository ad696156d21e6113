"""The transport interface: what the flow runtime needs from a durable message engine.

One interface, several engines (embedded SQLite now, RabbitMQ later); one contract test suite
(``tests/bus/transport/``) runs against every engine.

Life of a message inside a transport::

    publish ─▶ queued ─▶ (consumer) Delivery ─┬─ complete('delivered' | 'filtered', emit=...)
                 ▲                             ├─ checkpoint(env)  progress after a to: call
                 └──── scheduled ◀─ retry(env, delay)
                                               └─ dead(env, error) ─▶ dead letter ─ replay ─▶ queued

Each Delivery method is one atomic, durable write: the ledger entries handed to it, the new
envelope state, and any emitted envelopes are committed together before it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from bus.envelope import Envelope
from bus.errors import LeaseLostError, TransportError


class MessageState(StrEnum):
    QUEUED = "queued"  # ready now, or scheduled for later (available_at in the future)
    DELIVERED = "delivered"
    FILTERED = "filtered"
    DEAD = "dead"
    PURGED = "purged"  # a dead letter removed by an operator; the ledger keeps its history


TERMINAL = frozenset({MessageState.DELIVERED, MessageState.FILTERED, MessageState.DEAD})


@dataclass(slots=True)
class LedgerEntry:
    """One line in a message's history; never changed once made (not a frozen dataclass only
    because that costs ~0.8 µs a construction, and each step of each message makes one).

    ``kind``: received | step | retry_scheduled | delivered | filtered | dead | replayed |
    purged | duplicate | republished (RabbitMQ: queued again after its publisher died before
    the broker's confirm). ``outcome`` for steps: ok | retry | fail | skipped.
    """

    message_id: str
    kind: str
    at: float
    flow: str = ""
    step: str | None = None  # "steps[2] to: tickets.create_ticket"
    attempt: int | None = None
    outcome: str | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "kind": self.kind,
            "at": self.at,
            "flow": self.flow,
            "step": self.step,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "error": self.error,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """The transport's current view of one message."""

    envelope: Envelope
    state: MessageState
    available_at: float  # when a queued message may next run
    updated_at: float
    error: str | None = None  # last error, for dead letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be delivered: its envelope at the failed step, why, and how often tried."""

    message_id: str
    flow: str
    envelope: Envelope
    step: str | None
    error: str
    error_chain: list[str]
    attempts: list[LedgerEntry]
    dead_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "flow": self.flow,
            "step": self.step,
            "error": self.error,
            "error_chain": self.error_chain,
            "attempts": [a.to_dict() for a in self.attempts],
            "dead_at": self.dead_at,
            "envelope": self.envelope.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class PublishResult:
    """``accepted``: ids of the envelopes stored. ``duplicate_of``: set when the dedupe key was seen."""

    accepted: list[str]
    duplicate_of: list[str] | None = None


class Delivery(ABC):
    """One message handed to a consumer. Exactly one of complete / retry / dead ends it."""

    envelope: Envelope
    _ended: bool = False

    @property
    def ended(self) -> bool:
        return self._ended

    def _check(self, envelope: Envelope, what: str) -> None:
        """Engines call this first in every method: one ending per delivery, same message id."""
        if self._ended:
            raise TransportError(
                f"message {self.envelope.id}: {what}() after the delivery ended; "
                "call exactly one of complete / retry / dead per delivery"
            )
        if envelope.id != self.envelope.id:
            raise ValueError(
                f"message {self.envelope.id}: {what}() got envelope {envelope.id}; "
                "derive it with evolve() so the id stays"
            )

    @abstractmethod
    async def checkpoint(self, envelope: Envelope, entries: Sequence[LedgerEntry] = ()) -> None:
        """Durably record progress (e.g. cursor past a successful to:) without ending the delivery."""

    @abstractmethod
    async def complete(
        self,
        state: MessageState,
        envelope: Envelope,
        entries: Sequence[LedgerEntry] = (),
        emit: Sequence[tuple[Envelope, float]] = (),
    ) -> None:
        """End as DELIVERED or FILTERED; ``emit`` (envelope, delay seconds) are published atomically."""

    @abstractmethod
    async def retry(
        self, envelope: Envelope, delay: float, entries: Sequence[LedgerEntry] = ()
    ) -> None:
        """Run ``envelope`` (cursor at the failed step, attempt already incremented) after ``delay``."""

    @abstractmethod
    async def dead(
        self,
        envelope: Envelope,
        error: str,
        error_chain: Sequence[str],
        entries: Sequence[LedgerEntry] = (),
    ) -> None:
        """Move to the dead-letter queue with the error and its chain."""


Handler = Callable[[Delivery], Awaitable[None]]


async def run_handler(
    handler: Handler,
    delivery: Delivery,
    crash_retry: Callable[[str], Awaitable[None]],
    passthrough: tuple[type[BaseException], ...] = (),
) -> None:
    """The contract every engine keeps: a handler that raises, or returns without ending its
    delivery, is logged and its message retried later (``crash_retry(reason)``).
    ``passthrough`` errors (the engine's own outages) propagate instead, and so does
    LeaseLostError: the message is another process's now, there is nothing to retry here."""
    env = delivery.envelope
    try:
        await handler(delivery)
        if not delivery.ended:
            await crash_retry("handler returned without complete/retry/dead")
    except (LeaseLostError, *passthrough):
        raise
    except Exception as exc:
        structlog.get_logger("tieline.transport").error(
            "transport.handler_crashed", message_id=env.id, flow=env.flow, cursor=env.cursor,
            attempt=env.attempt, exc_info=exc,
        )
        if not delivery.ended:
            await crash_retry(f"handler crashed: {type(exc).__name__}: {exc}")


class Transport(ABC):
    """A durable engine: queue per flow, ledger, dead letters, inbound dedupe."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self, timeout: float = 10.0) -> None:
        """Stop consuming, let in-flight handlers finish (up to ``timeout``), flush, close."""

    # ----- producing ------------------------------------------------------------------
    @abstractmethod
    async def publish(
        self,
        envelopes: Sequence[Envelope],
        *,
        dedupe_key: str | None = None,
        delay: float = 0.0,
        entries: Sequence[LedgerEntry] = (),
    ) -> PublishResult:
        """Store ``envelopes`` durably (returns after commit) and queue them.

        With ``dedupe_key``: if the key was seen within the dedupe window nothing is stored and
        ``duplicate_of`` lists the ids first accepted under it. Raises BackpressureError when the
        backlog is over its bound. A 'received' ledger entry is written for each envelope.
        """

    # ----- consuming ------------------------------------------------------------------
    @abstractmethod
    def consume(self, flow: str, handler: Handler, *, concurrency: int = 16) -> None:
        """Start delivering ``flow``'s messages to ``handler``, at most ``concurrency`` at once.

        A handler that raises is a bug: the transport logs it and retries the message later.
        """

    # ----- ledger ---------------------------------------------------------------------
    @abstractmethod
    async def message(self, message_id: str) -> MessageRecord | None: ...

    @abstractmethod
    async def history(self, message_id: str) -> list[LedgerEntry]: ...

    @abstractmethod
    async def search(
        self,
        *,
        flow: str | None = None,
        state: MessageState | None = None,
        correlation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[MessageRecord]: ...

    # ----- dead letters ---------------------------------------------------------------
    @abstractmethod
    async def dead_letters(self, *, flow: str | None = None, limit: int = 100) -> list[DeadLetter]: ...

    @abstractmethod
    async def dead_letter(self, message_id: str) -> DeadLetter | None: ...

    async def dead_letter_summary(self, flow: str) -> tuple[int, float | None]:
        """(how many dead letters ``flow`` has, when the oldest died), for metrics and the
        dashboard on every scrape: transports answer from an index instead of reading every
        letter, as this default does."""
        letters = await self.dead_letters(flow=flow, limit=1_000_000)
        return len(letters), min((d.dead_at for d in letters), default=None)

    @abstractmethod
    async def replay(self, message_id: str, envelope: Envelope | None = None) -> bool:
        """Queue a dead letter again (from its failed step, attempt 1); False if not dead."""

    @abstractmethod
    async def purge(self, message_ids: Sequence[str]) -> int:
        """Remove dead letters (state PURGED, history kept); returns how many."""

    # ----- state ----------------------------------------------------------------------
    @abstractmethod
    async def backlog(self, flow: str | None = None) -> int:
        """Messages not yet in a terminal state (queued or scheduled)."""
