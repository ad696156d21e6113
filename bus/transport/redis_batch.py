"""Group commit for Redis: commands issued while a round trip is in flight share the next one.

A worker with many deliveries in flight issues a few Redis commands per message; sending each
as its own round trip costs a write, a read and redis-py's per-call machinery every time. Here
the first command of an idle moment starts a drain task, which waits one more event-loop tick
so that the deliveries woken together (by one batch of replies, one read from the broker) join
in; while a pipeline is on the wire, later commands queue up and go together in the next one.
One pipeline is in flight at a time, so commands run in the order they were issued, and a quiet
worker still pays one round trip per command.

Pipelines go on one connection the batch keeps (checked like a pool checkout after an idle
second), written in one go (hiredis packs the commands in C) and read reply by reply off the
connection's hiredis reader (``_Replies``), each made what ``execute_command`` makes of it (the
client's response callbacks). Each command keeps its own result or error; a connection failure
fails every command of its pipeline not answered yet. A caller that stops waiting (cancelled)
does not unsend its command. A ``Tx`` goes as MULTI, its commands, EXEC (one future for the
lot). Scripts go as EVALSHA (their text is sent again only after a NOSCRIPT: a restarted or
flushed Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import hiredis
import orjson
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio import Connection, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus.transport.tick_batch import TickBatcher

MAX_BATCH = 512  # commands per pipeline: bounds one write and one burst of reply parsing
IDLE_CHECK = 1.0  # seconds unused after which the connection is checked before a write

MULTI = hiredis.pack_command(("MULTI",))
EXEC = hiredis.pack_command(("EXEC",))

# ARGV: key, value, milliseconds, commands (a JSON list: orjson builds it in C). SET NX PX, and
# only if that set the key run the commands; else answer the value held (a script runs alone: it
# cannot expire meanwhile).
CLAIM = """
if redis.call('SET', ARGV[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  for _, c in ipairs(cjson.decode(ARGV[4])) do redis.call(unpack(c)) end
  return false
end
return redis.call('GET', ARGV[1])
"""


def _text(value: object) -> str:
    if isinstance(value, bytes):  # JSON documents stored as values; orjson gives bytes
        return value.decode()
    raise TypeError(f"redis_batch.Tx: cannot send {type(value).__name__} {value!r}")


# Reply types hiredis gives that are plain replies (errors, push messages and "need more" are not)
_PLAIN = frozenset({bytes, int, list, type(None)})

_TRANSACTION = object()  # first word of a queued Tx: MULTI, its commands, EXEC


class Tx:
    """Commands to apply atomically with :meth:`RedisBatch.apply` (MULTI … EXEC) or
    :meth:`RedisBatch.claim` (a Lua call).

    Words are str, bytes (UTF-8 text), int or float; floats go as their shortest repr (hiredis)
    or as ``%.17g`` (Lua), both of which read back as the same float."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def add(self, *command: Any) -> None:
        self.commands.append(command)

    def __bool__(self) -> bool:
        return bool(self.commands)


class RedisBatch(TickBatcher):
    """Coalesces commands from concurrent callers into pipelines (see the module doc)."""

    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH, idle_check: float = IDLE_CHECK):
        super().__init__(max_batch)
        self._r = redis
        self._idle_check = idle_check
        self._sha: dict[str, str] = {}
        self._conn: Connection | None = None
        self._used_at = 0.0

    async def aclose(self) -> None:
        """Hand the batch's connection back to the client's pool (the client stays open)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._r.connection_pool.release(conn)

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (as for ``Redis.execute_command``); await the result for its reply."""
        fut: asyncio.Future[Any] = self._future()
        self._enqueue((args, fut))
        return fut

    async def script(self, source: str, *args: Any) -> Any:
        """Run the Lua script ``source`` (no KEYS, ``args`` as ARGV); its reply."""
        sha = self._sha.get(source)
        if sha is None:
            sha = self._sha[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.call("EVALSHA", sha, 0, *args)
        except NoScriptError:  # not cached by this server yet: EVAL caches it
            return await self.call("EVAL", source, 0, *args)

    def script_soon(self, source: str, *args: Any) -> asyncio.Future[Any]:
        """``script`` without waiting: queued in order now, its reply in the returned future.
        A NOSCRIPT (the server restarted or flushed its scripts) is answered by sending the
        text, as ``script`` does, which then runs after what was queued meanwhile."""
        result: asyncio.Future[Any] = self._future()
        sha = self._sha.get(source)
        if sha is None:
            sha = self._sha[source] = hashlib.sha1(source.encode()).hexdigest()

        def settle(fut: asyncio.Future[Any], retried: bool = False) -> None:
            if result.done():
                return
            if fut.cancelled():
                result.cancel()
            elif isinstance(fut.exception(), NoScriptError) and not retried:
                self.call("EVAL", source, 0, *args).add_done_callback(lambda f: settle(f, True))
            elif fut.exception() is not None:
                result.set_exception(fut.exception())  # type: ignore[arg-type]
            else:
                result.set_result(fut.result())

        self.call("EVALSHA", sha, 0, *args).add_done_callback(settle)
        return result

    async def apply(self, tx: Tx) -> None:
        """Run ``tx``'s commands in order as one atomic unit: MULTI, the commands, EXEC.

        Not a Lua call: Redis spent about two thirds of such a script's time in Lua itself
        (decoding the commands, bridging each ``redis.call``), not in the commands
        (bench/RESULTS.md, session 12). A command Redis refuses while queueing (a wrong
        argument count) applies none of them; one that fails as it runs (a wrong type) fails
        the call while the others stand, as in a script."""
        if tx:
            await self.call(_TRANSACTION, tx.commands)

    async def claim(self, key: str, value: bytes, ttl_ms: int, tx: Tx) -> bytes | None:
        """Set ``key`` to ``value`` for ``ttl_ms`` unless it is set; only if this call set it, run
        ``tx`` in the same atomic unit and return None, else return the value it holds."""
        return await self.script(
            CLAIM, key, value, ttl_ms, orjson.dumps(tx.commands, default=_text)
        )

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """One write of every command, then their replies in order, on the batch's connection.

        What a redis-py pipeline does, minus its per-command machinery (hiredis packs in C) and a
        pool checkout each time."""
        sent: list[tuple[Any, asyncio.Future[Any]]] = []
        packed = []
        callbacks = self._r.response_callbacks  # what execute_command makes of each reply
        for args, fut in batch:
            try:
                if args[0] is _TRANSACTION:
                    commands = args[1]
                    words = b"".join([hiredis.pack_command(c) for c in commands])
                    packed.append(MULTI + words + EXEC)
                    sent.append((len(commands), fut))  # a count: that many QUEUED replies
                else:
                    packed.append(hiredis.pack_command(args))
                    sent.append((callbacks.get(args[0]), fut))
            except TypeError as exc:  # a word Redis has no type for (None, a bool): only this one
                if not fut.done():
                    fut.set_exception(DataError(f"redis_batch: cannot send {args!r}: {exc}"))
        if not sent:
            return
        replied = 0
        loop = asyncio.get_running_loop()
        try:
            conn = self._conn
            if conn is None:  # kept: one pipeline is in flight at a time, so one connection serves
                conn = self._conn = await self._r.connection_pool.get_connection()
            elif loop.time() - self._used_at >= self._idle_check:
                await _ensure(conn)
            self._used_at = loop.time()
            try:
                await conn.send_packed_command(b"".join(packed), check_health=False)
                replies = _Replies(conn)
                for callback, fut in sent:
                    if type(callback) is int:
                        reply = await replies.transaction(callback)
                        callback = None
                    else:
                        reply = replies.now()  # a ResponseError is this command's alone
                        if reply is NOT_ENOUGH_DATA:
                            reply = await replies.wait()
                    replied += 1
                    if fut.done():  # its caller was cancelled
                        continue
                    if isinstance(reply, Exception):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(callback(reply) if callback else reply)
            except BaseException:  # a reply left unread would be taken for the next one's
                await conn.disconnect(nowait=True)  # the next send connects again
                raise
        except asyncio.CancelledError:
            for _, fut in sent[replied:]:
                fut.cancel()
            raise
        except Exception as exc:  # the connection failed: every command not answered shares it
            for _, fut in sent[replied:]:
                if not fut.done():
                    fut.set_exception(exc)


class _Replies:
    """A pipeline's replies, read off the connection's hiredis reader one by one.

    What ``Connection.read_response`` does per reply, less its per-call machinery (a timeout
    context, the host's name formatted for an error that may never come, the health-check
    clock): 13 µs a reply against 32 in pipelines of 16 (bench/redis_replies.py).
    ``socket_timeout`` bounds each wait for more bytes from the socket, as it bounds a read
    there. It reaches into the connection's parser: pyproject.toml pins the redis-py major this
    was written against, and a parser other than hiredis's fails at the first pipeline, not
    silently."""

    __slots__ = ("_conn", "_parser", "_reader", "_held")

    def __init__(self, conn: Connection):
        parser = conn._parser
        reader = getattr(parser, "_reader", None)
        if not isinstance(reader, hiredis.Reader):
            raise RuntimeError(
                f"redis_batch: the connection's parser is {type(parser).__name__}, not hiredis's"
            )
        self._conn, self._parser, self._reader = conn, parser, reader
        self._held: Any = NOT_ENOUGH_DATA  # what ``now`` took but could not answer with

    def now(self) -> Any:
        """The next reply if the reader holds it whole, else NOT_ENOUGH_DATA: then call ``wait``.
        Most replies of a pipeline arrive together: taking them here costs no coroutine."""
        reply = self._reader.gets()
        if type(reply) in _PLAIN:
            return reply
        if isinstance(reply, (hiredis.PushNotification, RedisConnectionError)):
            self._held = reply  # for ``wait`` to deal with
            return NOT_ENOUGH_DATA
        return reply  # NOT_ENOUGH_DATA, or an error reply

    async def wait(self) -> Any:
        """The next reply after ``now`` answered NOT_ENOUGH_DATA, reading from the socket as
        needed; an error reply (a ResponseError) is returned, not raised."""
        reply, self._held = self._held, NOT_ENOUGH_DATA
        while True:
            if reply is NOT_ENOUGH_DATA:
                await self._read_more()
            elif isinstance(reply, hiredis.PushNotification):  # not a reply: the client's
                await self._parser.handle_push_response(reply)
            else:
                break
            reply = self._reader.gets()
        if isinstance(reply, RedisConnectionError):
            raise reply  # the server dropped us mid-pipeline: the rest of it fails
        return reply

    async def next(self) -> Any:
        """The next reply (``now``, else ``wait``)."""
        reply = self.now()
        return await self.wait() if reply is NOT_ENOUGH_DATA else reply

    async def transaction(self, count: int) -> Any:
        """MULTI's reply, ``count`` QUEUED ones and EXEC's: EXEC's list of replies, or the
        first error among them (a ResponseError, returned as ``next`` returns one)."""
        refused = None
        for _ in range(count + 2):  # MULTI's +OK, a +QUEUED (or an error) per command, EXEC's
            reply = self.now()
            if reply is NOT_ENOUGH_DATA:
                reply = await self.wait()
            if refused is None and isinstance(reply, Exception):
                refused = reply
        if refused is not None:
            if refused is not reply:  # EXEC answered EXECABORT: nothing was applied
                return ResponseError(f"{refused} (transaction not applied)")
            return reply  # EXEC's own error
        return next((r for r in reply if isinstance(r, Exception)), reply)

    async def _read_more(self) -> None:
        timeout = self._conn.socket_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._parser.read_from_socket()
        except TimeoutError as exc:
            raise RedisTimeoutError(f"redis_batch: no reply from Redis within {timeout} s") from exc
        except AttributeError as exc:  # the parser lost its stream: the connection was closed
            raise RedisConnectionError("redis_batch: connection closed mid-pipeline") from exc


async def _ensure(conn: Connection) -> None:
    """What the pool checks on a checkout: a connection the server closed while it sat idle, or
    one holding bytes nobody asked for, is connected afresh (a command sent on it would fail)."""
    pending = getattr(conn, "can_read", None) or conn.can_read_destructive  # renamed in redis-py 8
    try:
        if await pending():
            await conn.disconnect()
    except (RedisConnectionError, RedisTimeoutError, OSError):
        await conn.disconnect()
