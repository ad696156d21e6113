"""Worker processes' metrics and statistics, seen by the processes serving HTTP.

A `tieline worker` (started by hand, or by `tieline run --workers N`) runs flows but serves no
HTTP, so its Prometheus counters and dashboard statistics would be seen by nobody. Every
REPORT_EVERY seconds each worker writes a report (its metric samples and its raw per-minute
statistics) where the serving processes can read it: in Redis next to the RabbitMQ transport's
state (``{prefix}:workers:{id}``, expiring), or as a file beside the embedded database
(``{data_dir}/workers/{id}.json``, ignored once stale). ``/metrics`` then adds each worker's
samples with a ``worker`` label (its counters reset on its own when it restarts, as Prometheus
expects), and ``/api/v1/stats`` adds the workers' statistics into its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric

from bus.stats import Stats
from bus.transport.sqlite_shared import WORKER_ID_ENV

if TYPE_CHECKING:
    from bus.runtime import Runtime

log = structlog.get_logger()

REPORT_EVERY = 2.0  # seconds between a worker's reports
STALE_AFTER = 3 * REPORT_EVERY + 1  # a report older than this is a worker that stopped


def worker_name() -> str:
    """The supervisor's name for this worker, else host:pid (a worker started by hand)."""
    return os.environ.get(WORKER_ID_ENV) or f"{socket.gethostname()}:{os.getpid()}"


class ReportStore(Protocol):
    async def put(self, worker: str, report: bytes) -> None: ...

    async def all(self) -> list[bytes]: ...


class FileReports:
    """Reports as files in one directory (workers sharing an embedded file share its machine)."""

    def __init__(self, directory: Path, clock=time.time):  # noqa: ANN001
        self.dir = directory
        self.clock = clock

    async def put(self, worker: str, report: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker)
        tmp = self.dir / f".{safe}.tmp"
        tmp.write_bytes(report)
        tmp.replace(self.dir / f"{safe}.json")  # readers see the old report or the new, whole

    async def all(self) -> list[bytes]:
        found = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else ():
            try:
                if self.clock() - path.stat().st_mtime <= STALE_AFTER:
                    found.append(path.read_bytes())
            except FileNotFoundError:  # replaced or removed meanwhile
                continue
        return found


class RedisReports:
    """Reports as expiring Redis keys (workers of one broker prefix may be on any machine)."""

    def __init__(self, redis: Any, prefix: str):
        self.r = redis
        self.prefix = f"{prefix}:workers:"

    async def put(self, worker: str, report: bytes) -> None:
        await self.r.set(self.prefix + worker, report, px=int(STALE_AFTER * 1000))

    async def all(self) -> list[bytes]:
        keys = [k async for k in self.r.scan_iter(match=self.prefix + "*", count=500)]
        return [v for v in (await self.r.mget(keys) if keys else []) if v is not None]


def store_for(runtime: Runtime) -> ReportStore:
    redis = getattr(runtime.transport, "redis", None)
    if redis is not None:  # the RabbitMQ transport: its Redis, under its prefix
        return RedisReports(redis, runtime.transport.names.prefix)  # type: ignore[attr-defined]
    return FileReports(runtime.config.settings.data_dir / "workers")


# ----- writing (workers) ---------------------------------------------------------------------
def report(runtime: Runtime, worker: str) -> bytes:
    families = [
        {"name": m.name, "documentation": m.documentation, "type": m.type, "unit": m.unit,
         "samples": [[s.name, s.labels, s.value] for s in m.samples]}
        for m in runtime.metrics.registry.collect()
    ]
    return orjson.dumps({"worker": worker, "pid": os.getpid(), "at": time.time(),
                         "metrics": families, "stats": runtime.stats.dump()})


async def report_forever(runtime: Runtime, every: float = REPORT_EVERY) -> None:
    """A worker's reporting loop, until cancelled; a failed write is logged and tried again."""
    store, worker = store_for(runtime), worker_name()
    while True:
        try:
            await store.put(worker, report(runtime, worker))
        except Exception as exc:  # noqa: BLE001 - reports must never stop a worker
            log.warning("worker_reports.write_failed", worker=worker, error=repr(exc))
        await asyncio.sleep(every)


# ----- reading (serving processes) -----------------------------------------------------------
async def read(runtime: Runtime) -> list[dict]:
    """The live workers' reports (a broken one is logged and left out)."""
    found = []
    for raw in await store_for(runtime).all():
        try:
            found.append(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            log.warning("worker_reports.unreadable", error=str(exc))
    return found


class _Merged:
    """What ``generate_latest`` collects: this process's families plus every worker's samples,
    labelled ``worker``, under the same family (one HELP/TYPE per name)."""

    def __init__(self, own: Iterable[Metric], reports: list[dict]):
        self.own, self.reports = own, reports

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for m in self.own:
            families[m.name] = m
        for rep in self.reports:
            for f in rep["metrics"]:
                family = families.get(f["name"])
                if family is None:
                    family = families[f["name"]] = Metric(f["name"], f["documentation"], f["type"],
                                                          f.get("unit", ""))
                for name, labels, value in f["samples"]:
                    family.add_sample(name, {**labels, "worker": rep["worker"]}, value)
        return families.values()


async def render_metrics(runtime: Runtime) -> bytes:
    """``/metrics``: this process's metrics, readings refreshed, with the workers' samples."""
    own = await runtime.metrics.render_families()
    return generate_latest(_Merged(own, await read(runtime)))  # type: ignore[arg-type]


async def stats_snapshot(runtime: Runtime) -> dict:
    """``/api/v1/stats``: this process's statistics plus the workers', and who reported."""
    reports = await read(runtime)
    if reports:
        merged = Stats.merged([runtime.stats.dump(), *(r["stats"] for r in reports)],
                              clock=runtime.stats.clock)
        snap = merged.snapshot()
    else:  # no workers (one process): nothing to add
        snap = runtime.stats.snapshot()
    snap["workers"] = [{"worker": r["worker"], "pid": r["pid"], "reported_at": r["at"]}
                       for r in reports]
    return snap
