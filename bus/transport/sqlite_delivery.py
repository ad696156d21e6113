"""One message handed to a consumer of the embedded transport.

Each method is one write job (one atomic commit): the handed ledger entries, the message's
new envelope and state, and for ``complete`` the emitted children. Memory (scheduler,
backlog counters) changes only after the commit. The transport makes sure every state change
has its ledger line: if the caller did not hand an entry of that kind, a plain one is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bus.envelope import Envelope
from bus.errors import LeaseLostError
from bus.transport import sqlite_ops as ops
from bus.transport.base import Delivery, LedgerEntry, MessageState
from bus.transport.entries import (
    check_ending,
    complete_lines,
    dead_lines,
    retry_lines,
)

if TYPE_CHECKING:
    from bus.transport.sqlite import SqliteTransport


class SqliteDelivery(Delivery):
    """A delivery; ``current`` is the latest checkpointed envelope (what a crash retry runs)."""

    def __init__(self, transport: SqliteTransport, envelope: Envelope):
        self.envelope = envelope
        self.current = envelope
        self._t = transport
        self._owner = transport.owner
        self._ended = False

    async def _end(self, op: ops.Op, args: tuple, after) -> None:
        self._ended = True  # claimed now so a second ending call fails fast
        try:
            await self._t.writer.call(op, args, after)
        except LeaseLostError:
            raise  # over: another process has the message
        except BaseException:
            self._ended = False
            raise

    async def checkpoint(self, envelope: Envelope, entries: Sequence[LedgerEntry] = ()) -> None:
        self._check(envelope, "checkpoint")
        args = (envelope, self._t.clock(), self._owner, list(entries))
        try:
            await self._t.writer.call(ops.checkpoint, args)
        except LeaseLostError:
            self._ended = True  # another process has the message: nothing more to record here
            raise
        self.current = envelope

    async def complete(
        self,
        state: MessageState,
        envelope: Envelope,
        entries: Sequence[LedgerEntry] = (),
        emit: Sequence[tuple[Envelope, float]] = (),
    ) -> None:
        self._check(envelope, "complete")
        check_ending(envelope, state)
        now = self._t.clock()
        lines = complete_lines(envelope, state, now, entries, emit)
        children = [(child, now + max(delay, 0.0)) for child, delay in emit]

        def after(_: None) -> None:
            self._t.settled(envelope.flow)
            for child, available_at in children:
                self._t.enqueue(child, available_at)

        await self._end(ops.complete, (envelope, now, state, self._owner, children, lines), after)
        self.current = envelope

    async def retry(
        self, envelope: Envelope, delay: float, entries: Sequence[LedgerEntry] = ()
    ) -> None:
        self._check(envelope, "retry")
        now = self._t.clock()
        available_at = now + max(delay, 0.0)
        lines = retry_lines(envelope, now, delay, available_at, entries)

        def after(_: None) -> None:
            self._t.enqueue(envelope, available_at, new=False)

        await self._end(ops.retry, (envelope, now, available_at, self._owner, lines), after)
        self.current = envelope

    async def dead(
        self,
        envelope: Envelope,
        error: str,
        error_chain: Sequence[str],
        entries: Sequence[LedgerEntry] = (),
    ) -> None:
        self._check(envelope, "dead")
        now = self._t.clock()
        step, lines = dead_lines(envelope, now, error, entries)

        def after(_: None) -> None:
            self._t.settled(envelope.flow)

        args = (envelope, now, error, list(error_chain), step, self._owner, lines)
        await self._end(ops.dead, args, after)
        self.current = envelope
