"""What a large backlog costs the embedded transport: start-up time, memory, and drain rate.

A sink that is down for an hour leaves a backlog of its flow's messages in the file (up to
``backlog_limit``). This fills a file with ``-n`` queued messages (the bench order body, one
flow), then, in a fresh process per round, starts a transport on it as ``tieline run`` does
(one process alone on the file) and reports: the seconds ``start()`` takes, the RSS it adds,
and how fast a no-op consumer (16 handlers, each completing its message) drains the first
``--drain`` messages, with the RSS at the end of that drain.

    .venv/bin/python bench/backlog_memory.py -n 200000 --rounds 3
    .venv/bin/python bench/backlog_memory.py -n 200000 --rounds 3 --pythonpath /tmp/wt   # A/B

``--pythonpath DIR`` runs the measuring process on another checkout (a git worktree of an
earlier revision), alternated round by round with this one. Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

ROOT = c.ROOT
BODY = {"type": "order.created", "data": {"id": "o-00000", "phone": "+14155550100",
                                          "total": 129.5, "currency": "EUR",
                                          "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}}


def rss_mib() -> float:
    return c.rss_kib(os.getpid()) / 1024


async def fill(path: Path, n: int) -> None:
    from bus.envelope import Envelope
    from bus.transport.sqlite import SqliteTransport

    transport = SqliteTransport(path, sync="normal", backlog_limit=n + 1)
    await transport.start()
    try:
        async def publisher(start: int, stop: int) -> None:
            for i in range(start, stop, 50):
                envs = [Envelope.new("orders", {**BODY, "data": {**BODY["data"], "id": f"o-{j}"}})
                        for j in range(i, min(i + 50, stop))]
                await transport.publish(envs)

        step = n // 8
        await asyncio.gather(*(publisher(k * step, n if k == 7 else (k + 1) * step) for k in range(8)))
    finally:
        await transport.close()


async def measure(path: Path, drain: int) -> None:
    """In its own process: start a transport on the filled file, drain ``drain`` messages."""
    import gc

    from bus.launch import tune_process
    from bus.transport.base import Delivery, LedgerEntry, MessageState
    from bus.transport.sqlite import SqliteTransport

    tune_process()
    gc.collect()
    before = rss_mib()
    transport = SqliteTransport(path, sync="full", backlog_limit=10**8)
    t0 = time.perf_counter()
    await transport.start()
    started = time.perf_counter() - t0
    after_start = rss_mib()
    backlog = await transport.backlog()
    done = asyncio.Event()
    finished = 0

    async def handler(d: Delivery) -> None:
        nonlocal finished
        e = d.envelope
        await d.complete(MessageState.DELIVERED, e,
                         [LedgerEntry(e.id, "delivered", time.time(), flow=e.flow)])
        finished += 1
        if finished == drain:
            done.set()

    cpu0, t1 = time.process_time(), time.perf_counter()
    transport.consume("orders", handler, concurrency=16)
    await done.wait()
    wall, cpu = time.perf_counter() - t1, time.process_time() - cpu0
    end = rss_mib()
    await transport.close()
    print(f"RESULT {backlog} {started:.3f} {after_start - before:.1f} {drain / wall:.0f} "
          f"{cpu / drain * 1e6:.0f} {end:.1f}", flush=True)


def run_measure(path: Path, drain: int, pythonpath: str | None) -> list[float]:
    env = {**os.environ, "PYTHONPATH": pythonpath or str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--measure", str(path), "--drain", str(drain)],
                         capture_output=True, text=True, env=env, cwd=pythonpath or ROOT, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return [float(x) for x in line.split()[1:]]
    raise RuntimeError(f"measure gave no RESULT:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="queued messages in the file")
    ap.add_argument("--drain", type=int, default=20_000, help="messages drained per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pythonpath", help="a checkout to alternate with this one")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        asyncio.run(measure(Path(args.measure), args.drain))
        return
    labels = {"this tree": None, **({args.pythonpath: args.pythonpath} if args.pythonpath else {})}
    results: dict[str, list[list[float]]] = {k: [] for k in labels}
    with tempfile.TemporaryDirectory(prefix="tieline-backlog-") as d:
        seed = Path(d) / "seed.sqlite3"
        t0 = time.perf_counter()
        asyncio.run(fill(seed, args.n))
        print(f"filled {args.n} messages in {time.perf_counter() - t0:.1f} s "
              f"({seed.stat().st_size / 2**20:.0f} MiB file)")
        for rnd in range(args.rounds):
            for label, pp in labels.items():
                path = Path(d) / "run.sqlite3"
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
                subprocess.run(["cp", str(seed), str(path)], check=True)
                r = run_measure(path, args.drain, pp)
                results[label].append(r)
                print(f"round {rnd + 1} {label}: backlog {r[0]:.0f}, start {r[1]:.2f} s, "
                      f"RSS +{r[2]:.0f} MiB at start, drain {r[3]:.0f} msg/s at {r[4]:.0f} µs "
                      f"CPU/msg, RSS {r[5]:.0f} MiB after {args.drain} drained")
    for label, rs in results.items():
        med = [statistics.median(r[i] for r in rs) for i in range(6)]
        print(f"{label}: median start {med[1]:.2f} s, RSS +{med[2]:.0f} MiB for {med[0]:.0f} "
              f"queued, drain {med[3]:.0f} msg/s at {med[4]:.0f} µs CPU/msg")


if __name__ == "__main__":
    main()
