"""One writer per shared file: the other processes' writes are committed by the host, its
answers (results and errors) come back as if the write had been local, and when the host goes
away another process takes over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.envelope import Envelope
from bus.errors import BackpressureError, LeaseLostError, TransportError
from bus.transport.base import Delivery, MessageState
from bus.transport.sqlite import ONE_WRITER_ENV, SqliteTransport
from bus.transport.sqlite_writer_link import writer_address

from .conftest import Recorder, complete
from .test_sqlite_shared import CHILD, OPEN_AT, ROOT
from .test_sqlite_shared import shared as shared_file

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the writer address is an abstract Unix socket (Linux)")


async def shared(path: Path, **options: object) -> SqliteTransport:
    return await shared_file(path, one_writer=True, **options)


async def test_the_second_process_writes_through_the_first(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite3"
    host, other = await shared(db), await shared(db)
    try:
        assert host.writer.is_host and not other.writer.is_host
        rec = Recorder(complete)
        other.consume("jobs", rec, concurrency=4)
        envs = [Envelope.new("jobs", {"n": i}) for i in range(20)]
        result = await other.publish(envs, dedupe_key="batch-1")
        assert result.accepted == [e.id for e in envs]
        assert sorted([(await rec.next()).id for _ in envs]) == sorted(e.id for e in envs)
        async with asyncio.timeout(5):
            while await host.backlog("jobs"):
                await asyncio.sleep(0.01)
        assert {(await host.message(e.id)).state for e in envs} == {MessageState.DELIVERED}
        # publish, claims and endings all went to the host: the other committed nothing itself
        assert other.stats["commits"] == 0 and other.stats["sent_jobs"] >= 21
        assert host.stats["served_jobs"] == other.stats["sent_jobs"]
        again = await other.publish([Envelope.new("jobs", {})], dedupe_key="batch-1")
        assert again.duplicate_of == [e.id for e in envs]  # the result crossed back
    finally:
        await other.close()
        await host.close()


async def test_errors_come_back_as_their_own_class(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite3"
    host, other = await shared(db, backlog_limit=3), await shared(db, backlog_limit=3)
    try:
        await other.publish([Envelope.new("slow", {}) for _ in range(3)])
        with pytest.raises(BackpressureError, match="the bound is 3") as refused:
            await other.publish([Envelope.new("slow", {})])
        assert refused.value.retry_after == 1.0

        held: asyncio.Queue[Delivery] = asyncio.Queue()
        ended: asyncio.Queue[BaseException | None] = asyncio.Queue()
        released = asyncio.Event()

        async def hold(delivery: Delivery) -> None:
            await held.put(delivery)
            await released.wait()
            try:
                await delivery.complete(MessageState.DELIVERED, delivery.envelope)
                await ended.put(None)
            except LeaseLostError as exc:
                await ended.put(exc)
                raise

        other.consume("slow", hold, concurrency=1)
        await asyncio.wait_for(held.get(), 5)
        assert await host.release(other.owner) >= 1  # as a supervisor does for a dead worker
        released.set()
        error = await asyncio.wait_for(ended.get(), 5)
        assert isinstance(error, LeaseLostError)
        assert "lease passed to another process" in str(error)
    finally:
        await other.close()
        await host.close()


async def test_when_the_host_closes_the_next_write_elects_another(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite3"
    host, other = await shared(db), await shared(db)
    try:
        first = Envelope.new("jobs", {})
        await other.publish([first])
        await host.close()
        second = Envelope.new("jobs", {})
        await other.publish([second])  # nobody hosts now: this process takes over
        assert other.writer.is_host
        third = await shared(db)
        try:
            assert not third.writer.is_host
            await third.publish([Envelope.new("jobs", {})])
            assert other.stats["served_jobs"] >= 1
            assert (await third.message(second.id)).state == MessageState.QUEUED
        finally:
            await third.close()
    finally:
        await other.close()
        await host.close()


async def test_a_killed_host_costs_only_what_it_had_not_answered(tmp_path: Path) -> None:
    """The host SIGKILLed: the process linked to it writes for itself from its next write on."""
    db = tmp_path / "bus.sqlite3"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), "30"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), ONE_WRITER_ENV: "1"},
    )
    try:
        line = None
        while line not in (b"ready\n", b""):  # past the child's log lines
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)  # type: ignore[union-attr]
        assert line == b"ready\n", "the child did not start"
        ours = await shared(db)
        try:
            assert not ours.writer.is_host  # the child is
            before = Envelope.new("jobs", {})
            await ours.publish([before])
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            after = Envelope.new("jobs", {})
            async with asyncio.timeout(10):
                while True:
                    try:
                        await ours.publish([after])
                        break
                    except TransportError:  # a write sent before the link saw the kill
                        await asyncio.sleep(0.01)
            assert ours.writer.is_host
            for env in (before, after):
                assert (await ours.message(env.id)).state == MessageState.QUEUED
        finally:
            await ours.close()
    finally:
        child.kill()
        child.wait(10)


REFUSED = r"""
import os, socket, sys
os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("\0" + sys.argv[1])
s.settimeout(5)
print(repr(s.recv(64)))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
async def test_another_user_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite3"
    host = await shared(db)
    try:
        address = writer_address(db)
        assert address is not None
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", REFUSED, address[1:], stdout=subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert out.strip() == b"b''"  # closed without a hello
    finally:
        await host.close()


async def test_four_processes_starting_together_elect_one_host_and_all_close(tmp_path: Path) -> None:
    """Hosts closing while others link to them: every process's close-time writes land."""
    for attempt in range(5):
        db = tmp_path / f"new{attempt}.sqlite3"
        at = str(time.time() + 1.0)
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(db), at],
                                  stderr=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), ONE_WRITER_ENV: "1"})
                 for _ in range(4)]
        errors = [p.communicate(timeout=30)[1].decode()[-500:] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
