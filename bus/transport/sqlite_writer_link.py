"""One writer for a shared embedded file: the other processes hand it their writes.

SQLite lets one connection write at a time, and it does not queue the processes waiting for
the lock: measured at 1,000 msg/s with ``--workers 2``, each commit waited 1–4.5 ms for the
lock, three processes made ~200 commits/s between them, and p99 latency swung from 0.2 to
1.7 s (bench/RESULTS.md, session 7). So with ``one_writer`` (``TIELINE_ONE_WRITER=1``; off by
default until it measures faster: RESULTS.md, session 8), one process writes for all:

- every process opens its own group-commit writer (it creates the schema as before), then
  tries to bind the file's **writer address**, a Unix stream socket in Linux's abstract
  namespace named after the file's device and inode. The one that binds it is the *host*: it
  commits its own writes and everyone else's, so all of them share its group commits;
- the others connect to it and send each write as an operation's name and its arguments
  (``sqlite_ops``), pickled; the host runs it in its next batch and answers after COMMIT with
  the result or the error (``LeaseLostError``, a full disk…), so an acknowledgement still
  means committed;
- if the host goes away, what it had not answered fails with ``TransportError`` (the write may
  or may not be committed: the same as a commit that failed; leases and idempotency keys make
  running such a message again safe), and the next write elects a host again: whoever binds
  the address first. The kernel frees it when the process dies, so there is nothing to clean;
- only processes of the same user may connect (``SO_PEERCRED``): pickle is not for strangers.

Where abstract sockets do not exist, or two processes cannot see each other's (different
network namespaces), each writes for itself on the shared file, as before this module.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from bus.errors import BackpressureError, LeaseLostError, TransportError
from bus.transport.sqlite_jobs import Job
from bus.transport.sqlite_ops import OPS, Op
from bus.transport.sqlite_writer import GroupCommitWriter

log = structlog.get_logger("tieline.transport")

_HEADER = struct.Struct("!I")
_HELLO = (0, True, "hello")  # the host's first word: it took the connection (not a closed backlog)
_MOVED = "moved"  # an answer: not run, this host closed; send it to the next one
_BYE = (0, True, None)  # the host's last word: it stops hosting, link to whoever is next
BYE_TIMEOUT = 5.0  # seconds a closing host keeps answering the processes still linked
_ERRORS: dict[str, type[TransportError]] = {
    cls.__name__: cls for cls in (TransportError, LeaseLostError, BackpressureError)
}


def writer_address(path: Path) -> str | None:
    """The abstract socket name of ``path``'s writer; None where there are no abstract sockets."""
    if not sys.platform.startswith("linux"):
        return None
    st = os.stat(path)
    return f"\0tieline-writer-{st.st_dev}-{st.st_ino}"


class SharedWriter:
    """The writer of a process on a shared file: ``call`` goes to this process's own
    ``GroupCommitWriter`` while it is the host, else over the link to the host."""

    def __init__(self, local: GroupCommitWriter, path: Path):
        self.local = local
        self.path = path
        self.stats = local.stats
        self.stats.update(sent_jobs=0, served_jobs=0)
        self._address: str | None = None
        self._server: asyncio.AbstractServer | None = None  # while this process is the host
        self._clients: dict[asyncio.StreamWriter, _Outbox] = {}
        self._link: _Link | None = None  # while another process is
        self._electing: asyncio.Lock | None = None
        self._resending: set[asyncio.Task] = set()
        self._closing = False

    @property
    def is_host(self) -> bool:
        return self._link is None

    async def start(self, setup: Callable[..., None]) -> None:
        await self.local.start(setup)
        self._address = writer_address(self.path)
        self._electing = asyncio.Lock()
        await self._elect()

    async def _elect(self) -> None:
        """Become the host, or link to the one there is (a host can vanish between the two)."""
        if self._address is None:
            return
        for _ in range(20):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(self._address)
            except OSError:
                listener.close()
            else:
                self._server = await asyncio.start_unix_server(self._serve, sock=listener)
                log.debug("transport.writer_host", path=str(self.path))
                return
            try:
                reader, writer = await _connect(self._address)
                # Nothing is sent before the host's hello: a connection its closing listener
                # never accepted is dropped, and nothing on it can have been committed.
                hello = pickle.loads(await asyncio.wait_for(_read_frame(reader), 5.0))
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                await asyncio.sleep(0.01)
                continue
            if hello != _HELLO:
                writer.close()
                continue
            self._link = _Link(reader, writer, self.path, self._lost, self._resend)
            return
        raise TransportError(
            f"embedded transport {self.path}: could neither write for the file nor reach the "
            "process that does; another process keeps binding its writer address"
        )

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None

    # ----- writing ----------------------------------------------------------------------
    async def call(self, op: Op, args: tuple, after: Callable[[Any], None] | None = None) -> Any:
        """Run ``op(transport, conn, *args)`` in the file's next group commit, wherever the
        host is; ``after(result)`` runs here once it committed."""
        link = await self._current()
        if link is None:
            return await self.local.call(op, args, after)
        self.stats["sent_jobs"] += 1
        return await link.call(op.__name__, args, after)

    def _resend(self, name: str, args: tuple, after: Callable[[Any], None] | None,
                future: asyncio.Future) -> None:
        """A write the closing host answered 'moved' (it never ran): to the next host."""
        async def again() -> None:
            try:
                result = await self.call(OPS[name], args, after)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

        task = asyncio.get_running_loop().create_task(again())
        self._resending.add(task)
        task.add_done_callback(self._resending.discard)

    async def submit(self, job: Job) -> Any:
        """A job object (the publish), or its operation when another process is the host."""
        link = await self._current()
        if link is None:
            return await self.local.submit(job)
        op, args = job.operation()
        self.stats["sent_jobs"] += 1
        return await link.call(op.__name__, args, job.after)

    async def write(self, work: Callable[..., Any], after: Callable[[Any], None] | None = None) -> Any:
        """A closure on this process's own connection, host or not (tests and tooling)."""
        return await self.local.write(work, after)

    async def _current(self) -> _Link | None:
        if self._closing or self._address is None:
            return None
        if self._link is None and self._server is None:  # the host went away: elect again
            assert self._electing is not None
            async with self._electing:
                if self._link is None and self._server is None:
                    await self._elect()
        return self._link

    # ----- hosting ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            log.warning("transport.writer_refused", path=str(self.path), uid=uid)
            writer.close()
            return
        out = _Outbox(writer)
        self._clients[writer] = out
        out.send(_HELLO)
        if self._closing:
            out.send(_BYE)
        try:
            while True:
                request_id, name, args = pickle.loads(await _read_frame(reader))
                self._run_for(out, request_id, name, args)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the other process closed or died; what it sent still commits
        finally:
            self._clients.pop(writer, None)
            writer.close()

    def _run_for(self, out: _Outbox, request_id: int, name: str, args: tuple) -> None:
        op = OPS.get(name)
        if op is None:
            out.send((request_id, False, ("TransportError", f"no write operation {name!r}", None)))
            return
        try:
            future = self.local.call(op, args)
        except TransportError:  # closed: it never ran, the sender hands it to the next host
            out.send((request_id, False, (_MOVED, "", None)))
            return
        self.stats["served_jobs"] += 1

        def answer(done: asyncio.Future) -> None:
            exc = done.exception()
            if exc is None:
                try:
                    out.send((request_id, True, done.result()))
                    return
                except (pickle.PicklingError, TypeError, AttributeError) as unsent:
                    exc = unsent
            out.send((request_id, False, _encode(exc)))

        future.add_done_callback(answer)

    async def close(self) -> None:
        """Hand over: free the address (the next write of another process elects a host
        again), tell the linked processes so, answer what they still send until they hang
        up (BYE_TIMEOUT at most), then commit what was queued and close."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            for out in list(self._clients.values()):
                out.send(_BYE)
            try:
                async with asyncio.timeout(BYE_TIMEOUT):
                    while self._clients:
                        await asyncio.sleep(0.005)
            except TimeoutError:
                for out in list(self._clients.values()):
                    out.close()
        await self.local.close()
        if self._link is not None:
            await self._link.close()


class _Link:
    """This process's connection to the host: requests out, answers in, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path,
                 lost: Callable[[_Link], None], resend: Callable[..., None]):
        self._writer = writer
        self._resend = resend
        self._out = _Outbox(writer)
        self._path = path
        self._lost = lost
        self._next_id = 0
        self._retiring = False  # the host said it closes: answers only, then hang up
        self._pending: dict[int, tuple[asyncio.Future, Callable[[Any], None] | None, str, tuple]] = {}
        self._task = asyncio.get_running_loop().create_task(self._answers(reader))

    def call(self, name: str, args: tuple, after: Callable[[Any], None] | None) -> asyncio.Future:
        if self._task.done():
            raise self._gone()
        self._next_id += 1
        try:
            self._out.send((self._next_id, name, args))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TransportError(
                f"embedded transport {self._path}: cannot hand the write {name!r} to the "
                f"process writing for this file ({exc})"
            ) from exc
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = (future, after, name, args)
        return future

    async def _answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while not (self._retiring and not self._pending):
                request_id, ok, value = pickle.loads(await _read_frame(reader))
                if request_id == 0:  # the host is closing: new writes go to the next one
                    self._lost(self)
                    self._retiring = True
                    continue
                future, after, name, args = self._pending.pop(request_id)
                if future.done():  # its caller was cancelled
                    continue
                if not ok and value[0] == _MOVED:
                    self._resend(name, args, after, future)
                    continue
                if not ok:
                    future.set_exception(_decode(value))
                    continue
                if after is not None:
                    try:
                        after(value)
                    except Exception as exc:  # our own bookkeeping failed: tell the caller
                        future.set_exception(exc)
                        continue
                future.set_result(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._lost(self)
            self._writer.close()
            for future, *_ in self._pending.values():
                if not future.done():
                    future.set_exception(self._gone())
            self._pending.clear()

    def _gone(self) -> TransportError:
        return TransportError(
            f"embedded transport {self._path}: the process writing for this file went away "
            "before it answered; the write may or may not be committed (a message cut off so "
            "runs again under its lease and idempotency key)"
        )

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class _Outbox:
    """Frames sent at the end of the loop iteration, all in one write (one syscall)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._frames: list[bytes] = []

    def send(self, message: tuple) -> None:
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames += (_HEADER.pack(len(body)), body)

    def close(self) -> None:
        self._writer.close()

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if not self._writer.is_closing():
            self._writer.write(b"".join(frames))


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect by hand: uvloop's open_unix_connection refuses abstract names (EINVAL)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)  # a Unix socket connects at once, or is refused
        sock.setblocking(False)
        return await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return await reader.readexactly(size)


def _encode(exc: BaseException) -> tuple[str, str, float | None]:
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "TransportError"
    text = str(exc) if name != "TransportError" or isinstance(exc, TransportError) else (
        f"the writing process failed: {type(exc).__name__}: {exc}")
    return name, text, getattr(exc, "retry_after", None)


def _decode(value: tuple[str, str, float | None]) -> TransportError:
    name, text, retry_after = value
    if name == "BackpressureError":
        return BackpressureError(text, retry_after=retry_after or 1.0)
    return _ERRORS.get(name, TransportError)(text)
