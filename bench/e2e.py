"""End to end: signed webhook → map → delivered to an HTTP sink on loopback (sink in its own process).

An open-loop load generator (aiohttp + asyncio, at most ``--inflight`` requests open) sends at a
fixed rate. Each body carries its *scheduled* send time (so a late generator counts against
the bus, not for it); the sink records arrival − sent: the ingress→delivery latency.

1. a step-up over ``--rates`` (``--step-duration`` s each, the backlog emptied between steps)
   until p99 > 100 ms, the backlog grows, or the generator cannot hold the rate: the last rate
   that passed is the highest sustainable one;
2. a sustained run at ``--rate`` (default 1000 msg/s) for ``--duration`` s (default 60), on an
   empty backlog; late deliveries are waited for up to ``--drain`` s.

Run: .venv/bin/python bench/e2e.py [--rate 1000] [--duration 60] [--rates 250,500,...] [--no-steps]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import common as c
import httpx


@dataclass
class Load:
    """What one fixed-rate run saw from the sender's side."""

    rate: float
    duration: float
    sent: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    skipped: int = 0  # sends not made because ``inflight`` requests were already open
    retry_after: int = 0  # 503 answers that carried Retry-After
    ack_ms: list[float] = field(default_factory=list)  # request → 202 (response time)
    backlog: list[int] = field(default_factory=list)  # /readyz samples, one a second

    @property
    def accepted(self) -> int:
        return self.statuses[202]

    def achieved(self) -> float:
        return self.sent / self.duration


async def _sample_backlog(client: httpx.AsyncClient, load: Load, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            load.backlog.append((await client.get("/readyz")).json().get("backlog", -1))
        except (httpx.HTTPError, ValueError):
            load.backlog.append(-1)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def generate(url: str, rate: float, duration: float, *, inflight: int = 512,
                   connections: int = 64, on_tick=None) -> Load:  # noqa: ANN001 - optional per-second callback
    """Send signed webhooks to ``url`` at ``rate``/s for ``duration`` s (open loop, bounded)."""
    signer = c.Signer()
    tag = uuid.uuid4().hex[:8]
    load = Load(rate, duration)
    sem = asyncio.Semaphore(inflight)
    # aiohttp, not httpx, for the sender: httpx's pool spent ~10 ms of CPU per request here
    # and the generator, not the bus, set the pace (83 msg/s of 1000 asked).
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=10)) as client, \
            httpx.AsyncClient(base_url=url, timeout=5) as probe:

        async def one(i: int, sent: float) -> None:
            mid = f"e2e_{tag}_{i}"
            body = c.order(mid, sent)
            t = time.perf_counter()
            try:
                async with client.post(c.HOOK, data=body, headers=signer.headers(mid, body)) as r:
                    await r.read()
                load.statuses[r.status] += 1
                if r.status == 503 and "retry-after" in r.headers:
                    load.retry_after += 1
                if r.status == 202:
                    load.ack_ms.append((time.perf_counter() - t) * 1000)
            except (aiohttp.ClientError, TimeoutError) as e:
                load.statuses[type(e).__name__] += 1
            finally:
                sem.release()

        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_backlog(probe, load, stop))
        tasks: set[asyncio.Task] = set()
        t0, wall0 = time.perf_counter(), time.time()
        i, next_tick = 0, 1.0
        while (elapsed := time.perf_counter() - t0) < duration:
            due = int(elapsed * rate)
            while i < due:
                if sem.locked():
                    load.skipped += 1
                else:
                    await sem.acquire()
                    task = asyncio.create_task(one(i, wall0 + i / rate))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    load.sent += 1
                i += 1
            if on_tick and elapsed >= next_tick:
                on_tick(elapsed)
                next_tick += 1.0
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        stop.set()
        await sampler
    return load


def backlog(url: str) -> int:
    return httpx.get(url + "/readyz", timeout=5).json().get("backlog", -1)


def drain(sink_port: int, expected: int, url: str, timeout: float = 60.0) -> dict:
    """Wait until the sink has ``expected`` deliveries and the bus's backlog is empty (or
    ``timeout``), so the next step starts clean; return the sink's stats and reset them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
            c.sink_stats(sink_port)["count"] < expected or backlog(url) > 0):
        time.sleep(0.2)
    return c.sink_stats(sink_port, reset=True)


def verdict(load: Load, stats: dict) -> tuple[dict, list[str]]:
    lat = [x * 1000 for x in stats["latencies"]]
    fig = {"rate": load.rate, "achieved": load.achieved(), "accepted": load.accepted,
           "delivered": stats["count"], "p50": c.pct(lat, 50), "p95": c.pct(lat, 95),
           "p99": c.pct(lat, 99), "ack_p99": c.pct(load.ack_ms, 99),
           "backlog_end": load.backlog[-1] if load.backlog else -1,
           "backlog_max": max(load.backlog, default=-1), "statuses": dict(load.statuses),
           "skipped": load.skipped}
    why = []
    if fig["p99"] > 100:
        why.append(f"p99 {fig['p99']:.0f} ms > 100 ms")
    third = max(1, len(load.backlog) // 3)
    if load.backlog and min(load.backlog[-third:]) > max(load.rate, 2 * max(load.backlog[:third])):
        why.append(f"backlog grew to {fig['backlog_end']}")
    if fig["achieved"] < 0.95 * load.rate or load.skipped:
        why.append(f"generator held only {fig['achieved']:.0f}/s ({load.skipped} skipped)")
    if fig["delivered"] < fig["accepted"]:
        why.append(f"{fig['accepted'] - fig['delivered']} not delivered within the drain time")
    return fig, why


def row(fig: dict, why: list[str]) -> str:
    return (f"| {fig['rate']:.0f} | {fig['achieved']:.0f} | {fig['accepted']} | {fig['delivered']} | "
            f"{fig['p50']:.1f} | {fig['p95']:.1f} | {fig['p99']:.1f} | {fig['ack_p99']:.1f} | "
            f"{fig['backlog_max']} | {'; '.join(why) or 'ok'} |")


HEADER = ["| target msg/s | sent/s | 202 | delivered | p50 ms | p95 ms | p99 ms | 202 p99 ms | "
          "max backlog | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--rates", default="100,200,300,400,500,750,1000,1500")
    ap.add_argument("--step-duration", type=float, default=15)
    ap.add_argument("--no-steps", action="store_true")
    ap.add_argument("--inflight", type=int, default=512)
    ap.add_argument("--drain", type=float, default=120, help="max s to wait for the backlog to empty")
    ap.add_argument("--sync", default="full", choices=["full", "normal"])
    ap.add_argument("--concurrency", type=int, default=None, help="the flow's; default 16")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="experiment: sys.setswitchinterval in the bus (default 0.005)")
    ap.add_argument("--pythonpath", default=None,
                    help="experiment: PYTHONPATH for the bus, e.g. a dir with sniffio installed")
    args = ap.parse_args()
    lines = []
    with tempfile.TemporaryDirectory(prefix="tieline-e2e-") as d:
        tmp = Path(d)
        sink_port, port = c.free_port(), c.free_port()
        sink = c.start_sink(sink_port, tmp / "sink.log")
        cfg = c.write_config(tmp / "bus", port, f"http://127.0.0.1:{sink_port}", sync=args.sync,
                             concurrency=args.concurrency)
        env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else None
        bus = c.start_tieline(cfg, port, tmp / "tieline.log", switch_interval=args.switch_interval,
                              env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(generate(url, 100, 3))  # warm up; not counted
            drain(sink_port, 300, url)
            if not args.no_steps:  # first: they stop at the first failing rate
                lines += [f"Step-up, {args.step_duration:.0f} s per rate (sync={args.sync}); "
                          f"concurrency={args.concurrency or 16}, switch interval "
                          f"{args.switch_interval or 0.005}, PYTHONPATH={args.pythonpath or '-'}; latency = sink arrival − scheduled send.\n",
                          *HEADER]
                best = None
                for rate in (float(x) for x in args.rates.split(",")):
                    load = asyncio.run(generate(url, rate, args.step_duration, inflight=args.inflight))
                    fig, why = verdict(load, drain(sink_port, load.accepted, url))
                    lines.append(row(fig, why))
                    print(lines[-1])
                    if why:
                        break
                    best = rate
                lines.append(f"\nHighest sustainable rate: {best:.0f} msg/s" if best else
                             "\nNo step rate was sustainable.")
                drain(sink_port, 0, url, timeout=300)  # start the sustained run on an empty backlog
            lines += [f"\nSustained: {args.rate:.0f} msg/s for {args.duration:.0f} s.\n", *HEADER]
            load = asyncio.run(generate(url, args.rate, args.duration, inflight=args.inflight))
            fig, why = verdict(load, drain(sink_port, load.accepted, url, timeout=args.drain))
            lines.append(row(fig, why))
            print(lines[-1])
        finally:
            c.stop(bus)
            c.stop(sink)
    c.append_results("End to end: webhook → map → HTTP sink", [c.invocation()], "\n".join(lines))


if __name__ == "__main__":
    main()
