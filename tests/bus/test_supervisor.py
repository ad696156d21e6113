"""The supervisor of `tieline run --workers`: it keeps its workers running and stops them in order."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from bus.supervisor import PARENT_ENV, Supervisor, watch_parent
from bus.transport.sqlite_shared import WORKER_ID_ENV

# A stand-in worker: prints its name, then sleeps until signalled.
CHILD = [sys.executable, "-c",
         "import os, sys, time; print(os.environ['TIELINE_WORKER_ID'], flush=True); time.sleep(600)"]


async def until(check, timeout: float = 10.0) -> None:  # noqa: ANN001 - a predicate
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_dead_worker_is_restarted_and_reported() -> None:
    """A worker killed from outside is reported by name (to release its leases) and replaced."""
    exited: list[str] = []

    async def on_exit(name: str) -> None:
        exited.append(name)

    sup = Supervisor(CHILD, 2, on_exit=on_exit)
    await sup.start()
    try:
        await until(lambda: sup.alive() == 2)
        first = sup.describe()
        assert all(w["running"] for w in first) and len({w["name"] for w in first}) == 2
        os.kill(first[0]["pid"], signal.SIGKILL)
        await until(lambda: sup.describe()[0]["restarts"] == 1 and sup.alive() == 2)
        assert exited == [first[0]["name"]]
        now = sup.describe()
        assert now[0]["pid"] != first[0]["pid"] and now[0]["name"] != first[0]["name"]
        assert now[1] == first[1]  # the other one was left alone
    finally:
        await sup.stop(timeout=5)
    assert sup.alive() == 0


async def test_stop_ends_every_worker_without_restarts() -> None:
    """stop() SIGTERMs the workers and does not start new ones when they exit."""
    sup = Supervisor(CHILD, 2)
    await sup.start()
    await until(lambda: sup.alive() == 2)
    pids = [w["pid"] for w in sup.describe()]
    await sup.stop(timeout=5)
    await asyncio.sleep(0.3)
    assert sup.alive() == 0
    assert [w["restarts"] for w in sup.describe()] == [0, 0]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


async def test_workers_get_their_name_and_their_server(tmp_path) -> None:  # noqa: ANN001
    """Each worker's environment names it (its lease owner) and the server it belongs to."""
    out = tmp_path / "env.txt"
    code = (f"import os; open({str(out)!r}, 'w').write(os.environ['{WORKER_ID_ENV}'] + ' ' + "
            f"os.environ['{PARENT_ENV}']); import time; time.sleep(600)")
    sup = Supervisor([sys.executable, "-c", code], 1)
    await sup.start()
    try:
        await until(lambda: out.exists() and out.read_text().count(" ") == 1)
        name, parent = out.read_text().split()
        assert name == sup.describe()[0]["name"] and name.startswith(f"{os.getpid()}-w0-")
        assert parent == str(os.getpid())
    finally:
        await sup.stop(timeout=5)


async def test_a_worker_stops_when_its_server_is_gone(monkeypatch) -> None:  # noqa: ANN001
    """watch_parent sets the stop event once the process is no longer the named server's child."""
    monkeypatch.setenv(PARENT_ENV, str(os.getppid() + 1_000_000))  # not our parent
    stop = asyncio.Event()
    await asyncio.wait_for(watch_parent(stop, interval=0.01), 5)
    assert stop.is_set()
