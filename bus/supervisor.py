"""The worker processes of ``tieline run`` with ``settings.workers``: start, watch, restart, stop.

Python runs one core per process, so a bus that is to use several cores runs its flows in
worker processes (``tieline worker``) beside the HTTP server. ``tieline run`` starts them, and:

- names each one (``TIELINE_WORKER_ID``), so when one dies it can give that worker's leases
  back at once (embedded transport; the broker requeues a dead worker's messages itself);
- restarts a worker that exited, after a pause that doubles from 0.5 s to 30 s while it keeps
  dying young (a worker that ran a minute starts again at 0.5 s);
- starts each worker in its own session, so a Ctrl-C reaches the server only and the server
  stops its workers in order (SIGTERM, then SIGKILL after ``timeout``); a worker whose server
  disappears stops by itself (``watch_parent``);
- passes SIGHUP on, so a reload reaches every process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from bus.transport.sqlite_shared import WORKER_ID_ENV

log = structlog.get_logger("tieline.supervisor")

PARENT_ENV = "TIELINE_SUPERVISOR_PID"  # a worker stops when this process is no longer its parent
FIRST_PAUSE, LONGEST_PAUSE, STEADY = 0.5, 30.0, 60.0  # restart back-off, seconds


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    name: str = ""
    started: float = 0.0
    pause: float = FIRST_PAUSE
    restarts: int = 0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Keeps ``count`` worker processes running ``argv``.

    ``on_exit(name)`` runs after a worker ended unexpectedly, before its restart (the runtime
    releases the worker's leases there).
    """

    def __init__(
        self,
        argv: Sequence[str],
        count: int,
        *,
        on_exit: Callable[[str], Awaitable[object]] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.argv = list(argv)
        self.count = count
        self._on_exit = on_exit
        self._env = dict(os.environ if env is None else env)
        self._workers = [_Worker(i) for i in range(count)]
        self._stopping = False
        self._generation = 0

    def alive(self) -> int:
        return sum(1 for w in self._workers if w.proc is not None and w.proc.returncode is None)

    def describe(self) -> list[dict]:
        """Each worker: its name, pid, and how often it was restarted (status and the API)."""
        return [
            {"name": w.name, "pid": w.proc.pid if w.proc else None, "restarts": w.restarts,
             "running": w.proc is not None and w.proc.returncode is None}
            for w in self._workers
        ]

    async def start(self) -> None:
        for worker in self._workers:
            await self._spawn(worker)

    async def _spawn(self, worker: _Worker) -> None:
        self._generation += 1
        worker.name = f"{os.getpid()}-w{worker.index}-{self._generation}"
        env = {**self._env, WORKER_ID_ENV: worker.name, PARENT_ENV: str(os.getpid())}
        worker.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=env, start_new_session=True
        )
        worker.started = time.monotonic()
        worker.watcher = asyncio.ensure_future(self._watch(worker))
        log.info("worker.started", worker=worker.name, pid=worker.proc.pid)

    async def _watch(self, worker: _Worker) -> None:
        assert worker.proc is not None
        code = await worker.proc.wait()
        if self._stopping:
            return
        ran = time.monotonic() - worker.started
        if ran >= STEADY:
            worker.pause = FIRST_PAUSE
        log.error("worker.exited", worker=worker.name, pid=worker.proc.pid, code=code,
                  ran_s=round(ran, 1), restart_in_s=worker.pause)
        if self._on_exit is not None:
            await self._on_exit(worker.name)
        await asyncio.sleep(worker.pause)
        worker.pause = min(worker.pause * 2, LONGEST_PAUSE)
        if not self._stopping:
            worker.restarts += 1
            await self._spawn(worker)

    def forward(self, sig: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(sig)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker (they finish what they hold), SIGKILL those left after ``timeout``."""
        self._stopping = True
        for worker in self._workers:
            if worker.watcher is not None:
                worker.watcher.cancel()
        self.forward(signal.SIGTERM)
        procs = [w.proc for w in self._workers if w.proc is not None]
        waits = [asyncio.ensure_future(p.wait()) for p in procs if p.returncode is None]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            if pending:
                self.forward(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5.0)


def worker_argv(config_path: str, *, log_level: str) -> list[str]:
    """The command line of one worker of this bus: the same interpreter, the same flows.yaml.
    No ``--watch``: the server's reloads reach the workers as SIGHUP (``forward``)."""
    return [sys.executable, "-m", "cli", "worker", os.path.abspath(config_path),
            "--log-level", log_level]


async def watch_parent(stop: asyncio.Event, interval: float = 1.0) -> None:
    """In a supervised worker: set ``stop`` once the server that started it is gone."""
    expected = os.environ.get(PARENT_ENV)
    if not expected:
        return
    while os.getppid() == int(expected):
        await asyncio.sleep(interval)
    log.warning("worker.server_gone", expected_parent=int(expected))
    stop.set()
