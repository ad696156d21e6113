"""End to end: signed webhook → map → delivered to an HTTP sink on loopback (sink in its own process).

An open-loop load generator (aiohttp + asyncio, at most ``--inflight`` requests open) sends at a
fixed rate. Each body carries its *scheduled* send time (so a late generator counts against
the bus, not for it); the sink records arrival − sent: the ingress→delivery latency.

1. a step-up over ``--rates`` (``--step-duration`` s each, the backlog emptied between steps)
   until p99 > 100 ms, the backlog grows, or the generator cannot hold the rate: the last rate
   that passed is the highest sustainable one;
2. a sustained run at ``--rate`` (default 1000 msg/s) for ``--duration`` s (default 60), on an
   empty backlog; late deliveries are waited for up to ``--drain`` s (``--no-sustained``: skip).

Each fixed-rate run also reports where the CPU went, per process kind (from /proc/<pid>/stat
before and after the run): the bus, the sink, this generator, and for ``--transport rabbitmq``
RabbitMQ's beam.smp and redis-server (the machine's, so other users' traffic counts too), plus
the rest of the machine, idle and steal (time the hypervisor gave to other guests), all in % of
one core. Each run also reports the generator's longest gap between two passes of its send loop:
past 50 ms the sender itself was held up, and a failing verdict says so.

``--transport rabbitmq``: ``--serve N`` ``tieline serve`` processes on one port (SO_REUSEPORT)
and ``--workers M`` ``tieline worker`` processes, on the machine's RabbitMQ (127.0.0.1:5672,
guest) and Redis (127.0.0.1:6379) under a broker prefix unique to the run; its queues,
exchanges and Redis keys are deleted at the end.

Run: .venv/bin/python bench/e2e.py [--rate 1000] [--duration 60] [--rates 250,500,...] [--no-steps]
     [--no-sustained] [--transport rabbitmq --serve 1 --workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import common as c
import httpx
import loadgen
from loadstats import Load, sample_backlog

from bus.transport.rabbitmq_topology import Names

generate = loadgen.generate  # the default generator (raw HTTP/1.1; memory.py uses it too)


async def generate_aiohttp(url: str, rate: float, duration: float, *, inflight: int = 512,
                           connections: int = 64, on_tick=None) -> Load:  # noqa: ANN001 - optional per-second callback
    """The earlier generator, on aiohttp (``--generator aiohttp``): same load, ~10x its CPU."""
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
        sampler = asyncio.create_task(sample_backlog(probe, load, stop))
        tasks: set[asyncio.Task] = set()
        t0 = time.perf_counter()
        i, next_tick, last = 0, 1.0, 0.0
        while (elapsed := time.perf_counter() - t0) < duration:
            load.paused_ms = max(load.paused_ms, (elapsed - last) * 1000)
            last = elapsed
            due = int(elapsed * rate)
            while i < due:
                if sem.locked():
                    load.skipped += 1
                else:
                    await sem.acquire()
                    late = time.perf_counter() - (t0 + i / rate)  # wall clock read now: see loadgen
                    task = asyncio.create_task(one(i, time.time() - late))
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


# The generator's send loop sleeps 2 ms a pass; a gap this long means the sender itself was held
# up (by the machine: see the steal column), which a failing verdict then says.
PAUSED_MS = 50.0


def verdict(load: Load, stats: dict) -> tuple[dict, list[str]]:
    lat = [x * 1000 for x in stats["latencies"]]
    fig = {"rate": load.rate, "achieved": load.achieved(), "accepted": load.accepted,
           "delivered": stats["count"], "p50": c.pct(lat, 50), "p95": c.pct(lat, 95),
           "p99": c.pct(lat, 99), "ack_p99": c.pct(load.ack_ms, 99),
           "backlog_end": load.backlog[-1] if load.backlog else -1,
           "backlog_max": max(load.backlog, default=-1), "statuses": dict(load.statuses),
           "skipped": load.skipped, "paused": load.paused_ms}
    why = []
    if fig["p99"] > 100:
        why.append(f"p99 {fig['p99']:.0f} ms > 100 ms")
    third = max(1, len(load.backlog) // 3)
    if load.backlog and min(load.backlog[-third:]) > max(load.rate, 2 * max(load.backlog[:third])):
        why.append(f"backlog grew to {fig['backlog_end']}")
    if fig["achieved"] < 0.95 * load.rate or load.skipped:
        why.append(f"generator held only {fig['achieved']:.0f}/s ({load.skipped} skipped)")
    if why and load.paused_ms > PAUSED_MS:
        why.append(f"the generator itself was held up {load.paused_ms:.0f} ms")
    if fig["delivered"] < fig["accepted"]:
        why.append(f"{fig['accepted'] - fig['delivered']} not delivered within the drain time")
    return fig, why


def row(fig: dict, why: list[str]) -> str:
    return (f"| {fig['rate']:.0f} | {fig['achieved']:.0f} | {fig['accepted']} | {fig['delivered']} | "
            f"{fig['p50']:.1f} | {fig['p95']:.1f} | {fig['p99']:.1f} | {fig['ack_p99']:.1f} | "
            f"{fig['backlog_max']} | {fig['paused']:.0f} | {'; '.join(why) or 'ok'} |")


# ----- the processes under test ----------------------------------------------------------------
@dataclass
class Bus:
    """The processes under test by kind, where they answer, and the RabbitMQ prefix if any."""

    url: str
    procs: dict[str, list[subprocess.Popen]] = field(default_factory=dict)
    prefix: str | None = None

    def stop(self) -> None:
        """Stop every process we started, then delete what the run made on the broker."""
        for procs in self.procs.values():
            for proc in procs:
                if not isinstance(proc, _Pid):  # workers of `tieline run`: it stops them
                    c.stop(proc)
        if self.prefix:
            c.drop_prefix(self.prefix)


def start_embedded(bus: Bus, cfg: Path, args: argparse.Namespace, env: dict | None,
                   tmp: Path) -> None:
    """``tieline run``, with ``--workers`` worker processes on the same SQLite file if asked."""
    port = int(bus.url.rsplit(":", 1)[1])
    server = c.start_tieline(cfg, port, tmp / "tieline.log", switch_interval=args.switch_interval,
                             env=env, workers=args.workers)
    bus.procs["bus"] = [server]
    if args.workers:
        _until(lambda: len(c.children(server.pid)) == args.workers, [server],
               f"{args.workers} workers")
        # Popen-like handles, so Bus.stop() and the CPU table treat them as the others: the
        # server stops them itself.
        bus.procs["worker"] = [_Pid(pid) for pid in c.children(server.pid)]


@dataclass
class _Pid:
    """A process this script did not start (a worker of ``tieline run``): its pid only."""

    pid: int

    def poll(self) -> int | None:
        return None if Path(f"/proc/{self.pid}").exists() else 0


def start_rabbitmq(bus: Bus, cfg: Path, args: argparse.Namespace, env: dict | None,
                   tmp: Path) -> None:
    """``--serve`` servers sharing the port, then ``--workers`` workers, each one up."""
    port = int(bus.url.rsplit(":", 1)[1])
    bus.procs["serve"], bus.procs["worker"] = [], []
    for i in range(args.serve):
        proc = c.spawn([c.TIELINE, "serve", str(cfg), "--port", str(port), "--log-level",
                        "warning"], cwd=cfg.parent, log=tmp / f"serve-{i}.log", env=env)
        bus.procs["serve"].append(proc)
        _until(lambda p=proc: c.listens(p.pid, port), [proc], f"serve {i} listening on {port}")
    c.wait_http(bus.url + "/healthz", bus.procs["serve"][0])
    for i in range(args.workers):
        bus.procs["worker"].append(c.spawn([c.TIELINE, "worker", str(cfg), "--log-level", "warning"],
                                           cwd=cfg.parent, log=tmp / f"worker-{i}.log", env=env))
    queue = Names(bus.prefix).flow("relay")
    asyncio.run(_wait_consumers(queue, args.workers, bus.procs["worker"]))


def _until(ok: Callable[[], bool], procs: list[subprocess.Popen], what: str,
           timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if dead := [p.args for p in procs if p.poll() is not None]:
            raise RuntimeError(f"{dead} exited before {what} (see its log)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        time.sleep(0.05)


async def _wait_consumers(queue: str, count: int, procs: list[subprocess.Popen],
                          timeout: float = 60.0) -> None:
    """Until ``queue`` has ``count`` consumers (every worker consuming), by passive declares."""
    deadline = time.monotonic() + timeout
    connection = await aio_pika.connect(c.AMQP_URL)
    async with connection:
        channel = await connection.channel()
        while (await channel.declare_queue(queue, passive=True)).declaration_result.consumer_count < count:
            if dead := [p.args for p in procs if p.poll() is not None]:
                raise RuntimeError(f"{dead} exited before consuming {queue} (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: fewer than {count} consumers after {timeout}s")
            await asyncio.sleep(0.1)


# ----- where the CPU goes --------------------------------------------------------------------------
def cpu_kinds(bus: Bus, sink: subprocess.Popen) -> dict[str, list[int]]:
    kinds = {f"bus {k}" if k != "bus" else "bus": [p.pid for p in ps] for k, ps in bus.procs.items()}
    if bus.prefix:
        kinds["beam.smp"] = c.pids_named("beam.smp")  # RabbitMQ
        kinds["redis-server"] = c.pids_named("redis-server")
    kinds["sink"] = [sink.pid]
    kinds["generator"] = [os.getpid()]  # this process: the load, the /readyz probe
    return kinds


@dataclass
class Cpu:
    """CPU seconds per process kind over one run, the rest of the machine's, and its wall time."""

    by_kind: dict[str, float]
    rest: float
    wall: float
    steal: float  # CPU time the hypervisor gave to other guests while this VM had work

    def idle(self) -> float:
        return os.cpu_count() * self.wall - sum(self.by_kind.values()) - self.rest - self.steal


def metered(kinds: dict[str, list[int]], run: Callable[[], object]) -> tuple[object, Cpu]:
    """``run()``, with the CPU each kind of process used meanwhile."""
    def snap() -> tuple[dict[str, float], float, float, float]:
        return ({k: sum(c.cpu_seconds(p) for p in pids) for k, pids in kinds.items()},
                c.machine_busy_seconds(), c.machine_steal_seconds(), time.perf_counter())

    before, busy0, steal0, t0 = snap()
    out = run()
    after, busy1, steal1, t1 = snap()
    used = {k: after[k] - before[k] for k in kinds}
    return out, Cpu(used, max(0.0, busy1 - busy0 - sum(used.values())), t1 - t0, steal1 - steal0)


SYSTEM = ("bus", "bus serve", "bus worker", "beam.smp", "redis-server")  # what a message costs


def cpu_header(kinds: dict[str, list[int]]) -> list[str]:
    cols = [f"{k} ×{len(p)}" if len(p) > 1 else k for k, p in kinds.items()]
    return [f"| target msg/s | {' | '.join(cols)} | rest of machine | idle | steal | bus µs/msg |",
            "| --- " * (len(cols) + 5) + "|"]


def cpu_row(rate: str, cpu: Cpu, accepted: int) -> str:
    """Each kind's share in % of one core (all columns add up to ``nproc`` × 100 %), and the
    CPU per accepted message of the bus itself (with RabbitMQ and Redis on that transport)."""
    cells = [f"{secs / cpu.wall:.0%}" for secs in cpu.by_kind.values()]
    system = sum(s for k, s in cpu.by_kind.items() if k in SYSTEM)
    per_msg = f"{system / accepted * 1e6:.0f}" if accepted else "-"
    return (f"| {rate} | {' | '.join(cells)} | {cpu.rest / cpu.wall:.0%} | "
            f"{cpu.idle() / cpu.wall:.0%} | {cpu.steal / cpu.wall:.1%} | {per_msg} |")


HEADER = ["| target msg/s | sent/s | 202 | delivered | p50 ms | p95 ms | p99 ms | 202 p99 ms | "
          "max backlog | generator's longest gap ms | verdict |", "| --- " * 11 + "|"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--rates", default="100,200,300,400,500,750,1000,1500")
    ap.add_argument("--step-duration", type=float, default=15)
    ap.add_argument("--no-steps", action="store_true")
    ap.add_argument("--no-sustained", action="store_true", help="the step-up only")
    ap.add_argument("--inflight", type=int, default=512)
    ap.add_argument("--generator", default="raw", choices=["raw", "aiohttp"],
                    help="raw: bench/loadgen.py (default); aiohttp: the earlier client, ~10x its CPU")
    ap.add_argument("--drain", type=float, default=120, help="max s to wait for the backlog to empty")
    ap.add_argument("--sync", default="full", choices=["full", "normal"])
    ap.add_argument("--concurrency", type=int, default=None, help="the flow's; default 16")
    ap.add_argument("--transport", default="embedded", choices=["embedded", "rabbitmq"],
                    help="embedded: one `tieline run`; rabbitmq: --serve + --workers processes")
    ap.add_argument("--serve", type=int, default=None, help="rabbitmq: `tieline serve` processes "
                    "on one port (default 1)")
    ap.add_argument("--workers", type=int, default=None, help="rabbitmq: `tieline worker` "
                    "processes (default 2); embedded: `tieline run --workers N` (default 0)")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="experiment (embedded): sys.setswitchinterval in the bus (default 0.001, tune_process)")
    ap.add_argument("--pythonpath", default=None,
                    help="experiment: PYTHONPATH for the bus, e.g. a dir with sniffio installed")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--body-bytes", type=int, default=0,
                    help="pad each order with a call transcript to this many bytes (the flow "
                         "maps it down to three fields before delivery)")
    args = ap.parse_args()
    if args.body_bytes and args.generator != "raw":
        ap.error("--body-bytes needs the raw generator")
    gen = functools.partial(generate, size=args.body_bytes) if args.generator == "raw" else generate_aiohttp
    rabbit = args.transport == "rabbitmq"
    if not rabbit and args.serve is not None:
        ap.error("--serve needs --transport rabbitmq (embedded: --workers N runs "
                 "`tieline run --workers N`)")
    if rabbit and args.switch_interval is not None:
        ap.error("--switch-interval is an experiment on the embedded transport")
    args.serve = args.serve or 1
    args.workers = args.workers if args.workers is not None else (2 if rabbit else 0)
    shape = (f"transport=rabbitmq, {args.serve} serve + {args.workers} worker processes" if rabbit
             else f"transport=embedded, sync={args.sync}"
             + (f", tieline run --workers {args.workers}" if args.workers else ", one process"))
    lines, cpu_lines = [], []
    with tempfile.TemporaryDirectory(prefix="tieline-e2e-") as d:
        tmp = Path(d)
        sink_port, port = c.free_port(), c.free_port()
        sink = c.start_sink(sink_port, tmp / "sink.log")
        cfg = c.write_config(tmp / "bus", port, f"http://127.0.0.1:{sink_port}", sync=args.sync,
                             concurrency=args.concurrency)
        env = {"PYTHONPATH": args.pythonpath} if args.pythonpath else None
        bus = Bus(f"http://127.0.0.1:{port}")
        url = bus.url
        try:
            if rabbit:
                bus.prefix = f"bench-e2e-{uuid.uuid4().hex[:12]}"
                c.use_rabbitmq(cfg, bus.prefix)
                start_rabbitmq(bus, cfg, args, env, tmp)
            else:
                start_embedded(bus, cfg, args, env, tmp)
            warm = asyncio.run(gen(url, 100, 3))  # warm up; not counted
            drain(sink_port, warm.accepted, url)  # what it sent, not 300: it may send one less
            kinds = cpu_kinds(bus, sink)
            _, idle = metered(kinds, lambda: time.sleep(3))
            cpu_lines += [f"\nCPU per process kind during each fixed-rate run, % of one core "
                          f"({os.cpu_count()} cores: a row adds up to {os.cpu_count() * 100} %); "
                          "bus µs/msg = the bus processes"
                          f"{' + beam.smp + redis-server' if rabbit else ''} per 202.\n",
                          *cpu_header(kinds), cpu_row("idle (3 s)", idle, 0)]
            if not args.no_steps:  # first: they stop at the first failing rate
                lines += [f"Step-up, {args.step_duration:.0f} s per rate ({shape}); "
                          f"generator {args.generator}, body {len(c.order('m', 0.0, args.body_bytes)):,} bytes, concurrency={args.concurrency or 16}, switch interval "
                          f"{args.switch_interval or 0.001}, PYTHONPATH={args.pythonpath or '-'}; latency = sink arrival − scheduled send.\n",
                          *HEADER]
                best = None
                for rate in (float(x) for x in args.rates.split(",")):
                    load, cpu = metered(kinds, lambda r=rate: asyncio.run(
                        gen(url, r, args.step_duration, inflight=args.inflight)))
                    fig, why = verdict(load, drain(sink_port, load.accepted, url))
                    lines.append(row(fig, why))
                    cpu_lines.append(cpu_row(f"{rate:.0f}", cpu, load.accepted))
                    print(lines[-1], cpu_lines[-1], sep="\n")
                    if why:
                        break
                    best = rate
                lines.append(f"\nHighest sustainable rate: {best:.0f} msg/s" if best else
                             "\nNo step rate was sustainable.")
                if not args.no_sustained:
                    drain(sink_port, 0, url, timeout=300)  # start the sustained run on an empty backlog
            if not args.no_sustained:
                lines += [f"\nSustained: {args.rate:.0f} msg/s for {args.duration:.0f} s ({shape}; body "
                          f"{len(c.order('m', 0.0, args.body_bytes)):,} bytes).\n",
                          *HEADER]
                load, cpu = metered(kinds, lambda: asyncio.run(
                    gen(url, args.rate, args.duration, inflight=args.inflight)))
                fig, why = verdict(load, drain(sink_port, load.accepted, url, timeout=args.drain))
                lines.append(row(fig, why))
                cpu_lines.append(cpu_row(f"{args.rate:.0f} sustained", cpu, load.accepted))
                print(lines[-1], cpu_lines[-1], sep="\n")
        finally:
            bus.stop()
            c.stop(sink)
    if not args.no_results:
        c.append_results(f"End to end: webhook → map → HTTP sink ({args.transport})",
                         [c.invocation()], "\n".join(lines + cpu_lines))


if __name__ == "__main__":
    main()
