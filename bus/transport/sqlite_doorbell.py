"""Waking the other processes on a shared embedded file when this one queued work.

Each consuming process binds a Unix datagram socket in Linux's abstract namespace (nothing on
disk to clean up; it vanishes with the process) and lists it in the file's ``doorbells`` table.
A process that committed queued messages rings every bell listed there, one datagram each per
loop iteration however many messages it queued, and the rung processes look for work at once.
A bell that no longer answers belongs to a process that died: it is dropped from the table.

Rings only shorten the wait: every process also looks at the file every ``poll`` seconds, so a
lost datagram, a platform without abstract sockets, or a writer that does not ring (an older
tieline) costs latency, never a message.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
from collections.abc import Callable

REFRESH = 1.0  # seconds the list of bells is reused before it is read again


def register(conn: sqlite3.Connection, owner: str, address: str) -> None:
    conn.execute("INSERT OR REPLACE INTO doorbells (owner, address) VALUES (?, ?)", (owner, address))


def unregister(conn: sqlite3.Connection, owners: list[str]) -> None:
    conn.executemany("DELETE FROM doorbells WHERE owner = ?", [(o,) for o in owners])


class Doorbell:
    """This process's bell (``listen``) and its hand on the others' (``ring``)."""

    def __init__(self, owner: str, clock: Callable[[], float]):
        self.owner = owner
        self._clock = clock
        self._bell: socket.socket | None = None
        self._hand: socket.socket | None = None
        self._bells: list[tuple[str, str]] = []  # (owner, address) of the others
        self._read_at = float("-inf")
        self._pending = False
        self._turn = 0

    def listen(self, on_ring: Callable[[], None]) -> str | None:
        """Bind this process's bell; ``on_ring`` runs when another process rings it. The
        address to register, or None where abstract Unix sockets do not exist (polling only)."""
        if not sys.platform.startswith("linux"):
            return None
        address = f"\0tieline-bell-{self.owner}"
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bell.setblocking(False)
        bell.bind(address)
        self._bell = bell

        def drain() -> None:
            try:
                while bell.recv(64):
                    pass
            except BlockingIOError:
                pass
            on_ring()

        asyncio.get_running_loop().add_reader(bell.fileno(), drain)
        return address[1:]  # stored without the NUL

    def ring_soon(self, bells: Callable[[], list[tuple[str, str]]],
                  gone: Callable[[list[str]], None]) -> None:
        """Ring every other bell once, at the end of this loop iteration (many enqueues, one ring).

        ``bells()`` reads the table (at most every REFRESH s); ``gone(owners)`` gets the bells
        that did not answer."""
        if self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self._ring, bells, gone)

    def _ring(self, bells: Callable[[], list[tuple[str, str]]],
              gone: Callable[[list[str]], None]) -> None:
        self._pending = False
        now = self._clock()
        if now - self._read_at >= REFRESH:
            self._bells = [(o, a) for o, a in bells() if o != self.owner]
            self._read_at = now
        if not self._bells:
            return
        if self._hand is None:
            self._hand = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._hand.setblocking(False)
        dead = []
        for _ in range(len(self._bells)):  # the next one that answers
            self._turn = (self._turn + 1) % len(self._bells)
            owner, address = self._bells[self._turn]
            try:
                self._hand.sendto(b"!", f"\0{address}")
                break
            except (ConnectionRefusedError, FileNotFoundError):
                dead.append(owner)
            except (BlockingIOError, OSError):  # its queue is full: it is awake already
                break
        if dead:
            self._bells = [(o, a) for o, a in self._bells if o not in dead]
            gone(dead)

    def close(self) -> None:
        if self._bell is not None:
            asyncio.get_running_loop().remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None
        if self._hand is not None:
            self._hand.close()
            self._hand = None
