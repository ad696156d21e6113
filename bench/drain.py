"""Delivery across cores: how fast a backlog drains with one process and with worker processes.

Each run: `tieline serve` (ingress only, on a shared embedded file) takes N signed webhooks
while nothing consumes, then the consumers start and the sink counts deliveries; the rate is
measured from the first delivery to the last (start-up is left out). Consumers:

- ``run``: the server is stopped and `tieline run` (one process, the file to itself) drains;
- ``workers=K``: the server stays up and K `tieline worker` processes share the file.

Rounds alternate the consumers. The HTTP sink (its own process) takes part of the machine too.

Run: .venv/bin/python bench/drain.py [--n 6000] [--rounds 3] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import common as c
import loadgen


def cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {kind: sum(c.cpu_seconds(p) for p in ps) for kind, ps in pids.items()}


def wait_count(sink_port: int, n: int, pids: dict[str, list[int]],
               timeout: float = 300) -> tuple[float, float, int, dict[str, float]]:
    """(time of the first delivery, of the n-th, count at the first, CPU seconds per kind in
    between) by polling the sink."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        count = c.sink_stats(sink_port)["count"]
        now = time.perf_counter()
        if count and first is None:
            first = (now, count, cpu(pids))
        if count >= n:
            used = {k: v - first[2][k] for k, v in cpu(pids).items()}
            return first[0], now, first[1], used
        time.sleep(0.01)
    raise TimeoutError(f"only {c.sink_stats(sink_port)['count']} of {n} delivered in {timeout}s")


def one_run(tmp: Path, consumer: str, n: int, sink: subprocess.Popen, sink_port: int,
            sync: str) -> dict:
    port = c.free_port()
    cfg = c.write_config(tmp / f"bus-{consumer}-{time.time_ns()}", port,
                         f"http://127.0.0.1:{sink_port}", sync=sync)
    url = f"http://127.0.0.1:{port}"
    serve = c.spawn([c.TIELINE, "serve", str(cfg), "--port", str(port), "--log-level", "warning"],
                    cwd=cfg.parent, log=cfg.parent / "serve.log")
    procs = [serve]
    try:
        c.wait_http(url + "/healthz", serve)
        load = asyncio.run(loadgen.generate(url, 3000, n / 3000))
        assert load.accepted == load.sent, f"not all accepted: {dict(load.statuses)}"
        sent = load.accepted
        c.sink_stats(sink_port, reset=True)
        if consumer == "run":
            c.stop(serve)
            procs = [c.start_tieline(cfg, port, cfg.parent / "run.log")]
        else:
            k = int(consumer.split("=")[1])
            procs += [c.spawn([c.TIELINE, "worker", str(cfg), "--log-level", "warning"],
                              cwd=cfg.parent, log=cfg.parent / f"worker-{i}.log") for i in range(k)]
        kinds = {"consumers": [p.pid for p in procs[-1:] if consumer == "run"] or
                 [p.pid for p in procs[1:]], "sink": [sink.pid]}
        first, last, at_first, used = wait_count(sink_port, sent, kinds)
        wall = last - first
        return {"rate": (sent - at_first) / wall, "seconds": wall, "delivered": sent,
                "cpu": {k: v / wall for k, v in used.items()}}
    finally:
        for p in procs:
            c.stop(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--sync", default="full", choices=["full", "normal"], help="settings.sync")
    args = ap.parse_args()
    consumers = ["run", *(f"workers={k}" for k in args.workers.split(","))]
    results: dict[str, list[dict]] = {k: [] for k in consumers}
    with tempfile.TemporaryDirectory(prefix="tieline-drain-") as d:
        tmp = Path(d)
        sink_port = c.free_port()
        sink = c.start_sink(sink_port, tmp / "sink.log")
        try:
            for r in range(args.rounds):
                for consumer in consumers if r % 2 == 0 else reversed(consumers):
                    got = one_run(tmp, consumer, args.n, sink, sink_port, args.sync)
                    results[consumer].append(got)
                    print(f"round {r + 1} {consumer}: {got['rate']:.0f} msg/s "
                          f"({got['delivered']} in {got['seconds']:.1f} s), CPU "
                          f"{', '.join(f'{k} {v:.0%}' for k, v in got['cpu'].items())}", flush=True)
        finally:
            c.stop(sink)
    rows = ["| consumer | median msg/s | runs msg/s | × one process | CPU: consumers | CPU: sink |",
            "| --- | --- | --- | --- | --- | --- |"]
    base = statistics.median(x["rate"] for x in results["run"])
    for name, runs in results.items():
        med = statistics.median(x["rate"] for x in runs)
        label = "tieline run (one process)" if name == "run" else \
            f"tieline serve + {name.split('=')[1]} × tieline worker"
        each = ", ".join(f"{x['rate']:.0f}" for x in runs)
        share = {k: statistics.median(x["cpu"][k] for x in runs) for k in ("consumers", "sink")}
        rows.append(f"| {label} | {med:.0f} | {each} | {med / base:.2f} | "
                    f"{share['consumers']:.0%} | {share['sink']:.0%} |")
    body = (f"sync={args.sync}. {args.n} webhooks taken by `tieline serve` with nothing consuming, then drained to the "
            f"HTTP sink; rate from the first delivery to the last; {args.rounds} rounds alternated.\n\n"
            + "\n".join(rows) + "\n\nCPU in % of one core (the machine has "
            f"{os.cpu_count()}), medians over the drain.")
    c.append_results("Delivery across cores: draining a backlog (embedded)", [c.invocation()], body)


if __name__ == "__main__":
    main()
