"""Group commit for Redis: commands issued while a round trip is in flight share the next one.

A worker with many deliveries in flight issues a few Redis commands per message; sending each
as its own round trip costs a write, a read and redis-py's per-call machinery every time. Here
the first command of an idle moment starts a drain task, which waits one more event-loop tick
so that the deliveries woken together (by one batch of replies, one read from the broker) join
in; while a pipeline is on the wire, later commands queue up and go together in the next one.
One pipeline is in flight at a time, so commands run in the order they were issued, and a quiet
worker still pays one round trip per command.

Each command keeps its own result or error; a connection failure fails every command of its
pipeline. A caller that stops waiting (cancelled) does not unsend its command.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio import Redis

MAX_BATCH = 512  # commands per pipeline: bounds one write and one burst of reply parsing

# ARGV[1] is a JSON list of commands: run them in order, in one script call, so no reader sees
# part of them (what MULTI/EXEC gives, in one command and one reply). One JSON argument instead
# of a word per argument: orjson builds it in C, where redis-py would encode word by word.
APPLY = "for _, c in ipairs(cjson.decode(ARGV[1])) do redis.call(unpack(c)) end return 1"


def _text(value: object) -> str:
    if isinstance(value, bytes):  # JSON documents stored as values; orjson gives bytes
        return value.decode()
    raise TypeError(f"redis_batch.Tx: cannot send {type(value).__name__} {value!r}")


class Tx:
    """Commands to apply atomically with :meth:`RedisBatch.apply` (a Lua call, not MULTI/EXEC).

    Words are str, bytes (UTF-8 text), int or float; Lua hands numbers to Redis as ``%.17g``
    strings, which read back as the same float."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def add(self, *command: Any) -> None:
        self.commands.append(command)

    def __bool__(self) -> bool:
        return bool(self.commands)


class RedisBatch:
    """Coalesces commands from concurrent callers into pipelines (see the module doc)."""

    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH):
        self._r = redis
        self._max = max_batch
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._drain: asyncio.Task[None] | None = None

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (as for ``Redis.execute_command``); await the result for its reply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut))
        if self._drain is None:
            self._drain = loop.create_task(self._run())
        return fut

    async def apply(self, tx: Tx) -> None:
        """Run ``tx``'s commands in order as one atomic unit."""
        if tx:
            await self.call("EVAL", APPLY, 0, orjson.dumps(tx.commands, default=_text))

    async def _run(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # one more tick: the callers woken with this one join in
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                await self._send(batch)
        finally:
            self._drain = None
            for _, fut in self._queue:  # only when cancelled mid-way (loop shutting down)
                fut.cancel()
            self._queue = []

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:  # the connection failed: every command shares the error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), reply in zip(batch, replies, strict=True):
            if fut.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)
