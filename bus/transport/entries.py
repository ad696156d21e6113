"""The ledger lines every transport writes for a message's state changes.

One module so both engines record the same story: each ending adds its own line unless the
caller already handed one of that kind (the runner usually does, with more detail).
"""

from __future__ import annotations

from collections.abc import Sequence

from bus.envelope import Envelope
from bus.transport.base import LedgerEntry, MessageState

ENDINGS = frozenset({MessageState.DELIVERED, MessageState.FILTERED})


def received_entry(envelope: Envelope, now: float, delay: float = 0.0) -> LedgerEntry:
    """The 'received' ledger line written for every stored envelope."""
    detail: dict = {"delay": delay} if delay else {}
    if envelope.headers.get("variant"):
        detail["variant"] = envelope.headers["variant"]  # canary or primary
    return LedgerEntry(envelope.id, "received", now, flow=envelope.flow, attempt=envelope.attempt, detail=detail)


def duplicate_entry(key: str | None, holder: Sequence[str], rejected: Sequence[str],
                    now: float) -> LedgerEntry:
    """The 'duplicate' line for a publish refused because ``holder``'s claim has its key."""
    detail = {"dedupe_key": key, "rejected": list(rejected)}
    return LedgerEntry(holder[0] if holder else "", "duplicate", now, detail=detail)


def with_default(entries: Sequence[LedgerEntry], default: LedgerEntry) -> list[LedgerEntry]:
    """``entries``, plus ``default`` unless an entry of its kind for its message is there."""
    have = any(e.kind == default.kind and e.message_id == default.message_id for e in entries)
    return list(entries) if have else [*entries, default]


def check_ending(envelope: Envelope, state: MessageState) -> None:
    if state not in ENDINGS:
        raise ValueError(
            f"message {envelope.id}: complete() takes DELIVERED or FILTERED, not {state!r}; "
            "use retry() or dead() for the others"
        )


def complete_lines(
    envelope: Envelope, state: MessageState, now: float, entries: Sequence[LedgerEntry],
    emit: Sequence[tuple[Envelope, float]],
) -> list[LedgerEntry]:
    lines = with_default(
        entries, LedgerEntry(envelope.id, state.value, now, flow=envelope.flow, attempt=envelope.attempt)
    )
    return lines + [received_entry(child, now, delay) for child, delay in emit]


def retry_lines(envelope: Envelope, now: float, delay: float, due: float,
                entries: Sequence[LedgerEntry]) -> list[LedgerEntry]:
    return with_default(entries, LedgerEntry(
        envelope.id, "retry_scheduled", now, flow=envelope.flow, attempt=envelope.attempt,
        detail={"delay": delay, "available_at": due}))


def dead_lines(envelope: Envelope, now: float, error: str,
               entries: Sequence[LedgerEntry]) -> tuple[str | None, list[LedgerEntry]]:
    """The failed step (from the last entry naming one) and the lines to write."""
    step = next((e.step for e in reversed(entries) if e.step), None)
    return step, with_default(entries, LedgerEntry(
        envelope.id, "dead", now, flow=envelope.flow, step=step, attempt=envelope.attempt, error=error))

