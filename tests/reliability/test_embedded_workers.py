"""Fault runs on the embedded transport with several processes on one SQLite file.

1. `tieline run --workers 2` under load: a worker SIGKILLed twice (the server replaces it and
   gives its leases back), then the server itself SIGKILLed and started again.
2. Two `tieline serve` on one port (SO_REUSEPORT) and one `tieline worker`, all on one file:
   one server SIGKILLed under load; then the surviving server's /metrics and /api/v1/stats
   show the worker's deliveries.

Every acknowledged message is delivered exactly once (a to: call cut off by a kill is made
again with the same Idempotency-Key, which the sink honours). Sizes: TIELINE_FAULT_WORKER_MESSAGES
(run 1, 3000), TIELINE_FAULT_SCALEOUT_MESSAGES (run 2, 1200).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .accounting import Load, account, ids
from .conftest import Procs, flows_yaml, wait_healthy, write_config
from .test_embedded_faults import until

WORKER_MESSAGES = int(os.environ.get("TIELINE_FAULT_WORKER_MESSAGES", "3000"))
SCALEOUT_MESSAGES = int(os.environ.get("TIELINE_FAULT_SCALEOUT_MESSAGES", "1200"))


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found |= {int(c) for c in text}
    return found


async def workers_of(server_pid: int, count: int, timeout: float = 30) -> set[int]:
    await until(lambda: len(children(server_pid)) == count, timeout, f"{count} workers of {server_pid}")
    return children(server_pid)


async def settle(run: str, url: str, state, load: Load, started: float, notes: list[str],  # noqa: ANN001
                 expected: int) -> None:
    """Account for every message once the bus settled: none lost, none twice, all acknowledged."""
    tally = await account(run, url, state, load, settle=60, started=started, notes=notes)
    tally.report()
    assert tally.lost == 0, tally.text()
    assert tally.duplicates == 0, tally.text()
    assert tally.acknowledged == tally.sent == expected, tally.text()


async def test_workers_killed_under_load_are_replaced(tmp_path: Path, sink, procs: Procs,
                                                      port: int) -> None:
    """Workers SIGKILLed twice and the server once during 3,000 webhooks: none lost, none twice."""
    started = time.monotonic()
    state, sink_url = sink
    config = write_config(tmp_path, flows_yaml(sink_url))
    url = f"http://127.0.0.1:{port}"
    server = procs.start("run", config, port, extra=("--workers", "2"))
    await wait_healthy(url, server)
    workers = await workers_of(server.pid, 2)
    ready = httpx.get(url + "/readyz").json()["workers"]
    assert sorted(w["pid"] for w in ready if w["running"]) == sorted(workers), ready
    load = Load(url, ids("workers", WORKER_MESSAGES))
    sending = asyncio.create_task(load.run())
    notes: list[str] = []
    try:
        for share in (4, 2):
            mark = WORKER_MESSAGES // share
            await until(lambda m=mark: len(load.acked) >= m or sending.done(), 60, f"{mark} acks")
            victim = min(workers)
            os.kill(victim, 9)
            notes.append(f"worker {victim} SIGKILLed at {len(load.acked)} acknowledged, "
                         f"{len(state.delivered)} delivered")
            await until(lambda v=victim: v not in children(server.pid) and
                        len(children(server.pid)) == 2, 30, "the worker's replacement")
            replaced = children(server.pid)
            assert victim not in replaced and len(replaced - workers) == 1, (workers, replaced)
            workers = replaced
        mark = WORKER_MESSAGES * 3 // 4
        await until(lambda: len(load.acked) >= mark or sending.done(), 60, f"{mark} acks")
        notes.append(f"server SIGKILLed at {len(load.acked)} acknowledged")
        procs.kill(server)
        server = procs.start("run", config, port, extra=("--workers", "2"))
        await wait_healthy(url, server)
        await asyncio.wait_for(sending, 120)
    finally:
        sending.cancel()
    await settle("embedded-workers-killed", url, state, load, started, notes, WORKER_MESSAGES)


async def test_two_servers_and_a_worker_share_one_file(tmp_path: Path, sink, procs: Procs,
                                                       port: int) -> None:
    """`tieline serve` ×2 on one port + `tieline worker` on one file; a server SIGKILLed mid-load."""
    started = time.monotonic()
    state, sink_url = sink
    config = write_config(tmp_path, flows_yaml(sink_url))
    url = f"http://127.0.0.1:{port}"
    servers = [procs.start("serve", config, port) for _ in range(2)]
    for server in servers:
        await wait_healthy(url, server)
    worker = procs.start("worker", config)
    await asyncio.sleep(0.5)  # both bound: the second did not fail with "address in use"
    assert all(s.poll() is None for s in servers), [s.log.read_text() for s in servers]
    load = Load(url, ids("shared-serve", SCALEOUT_MESSAGES), give_up=60)
    sending = asyncio.create_task(load.run())
    notes: list[str] = []
    try:
        await until(lambda: len(load.acked) >= SCALEOUT_MESSAGES // 3 or sending.done(), 60,
                    "33% acks")
        procs.kill(servers[0])
        notes.append(f"server 1 SIGKILLed at {len(load.acked)} acknowledged")
        await asyncio.wait_for(sending, 120)
    finally:
        sending.cancel()
    await settle("embedded-two-servers-one-worker", url, state, load, started, notes,
                 SCALEOUT_MESSAGES)
    # the serving process shows the worker's numbers (bus.worker_reports), within a report period
    await until(lambda: delivered_by_workers(url) == SCALEOUT_MESSAGES, 15,
                "the worker's deliveries in the server's /metrics")
    stats = httpx.get(url + "/api/v1/stats").json()
    assert [w["pid"] for w in stats["workers"]] == [worker.pid], stats["workers"]
    counted = sum(f["count"] for f in stats["windows"]["60m"]["flows"].values())
    assert counted == SCALEOUT_MESSAGES, stats["windows"]["60m"]["flows"]


def delivered_by_workers(url: str) -> float:
    """Messages the server's /metrics says its workers delivered (samples labelled worker)."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if (sample.name == "tieline_flow_outcomes_total" and "worker" in sample.labels
                    and sample.labels["outcome"] == "delivered"):
                total += sample.value
    return total
