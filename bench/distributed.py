"""Distributed mode: consume → 8-field map → confirmed publish → ack on RabbitMQ, messages/s.

Run: .venv/bin/python bench/distributed.py [-n 5000] [--rounds 3] [--workers 1,2,4] [--stage-times]
Needs RabbitMQ on 127.0.0.1:5672 (guest) and Redis on 127.0.0.1:6379. Per round, back to back:

* tieline, K ``tieline worker`` processes (K in --workers): flow ``relay`` (``from: {topic:
  bench.in}``, ``map`` with the mapping of bench_mapping.py, ``publish: bench.out``) on a fresh
  ``broker_prefix``. A second flow ``sink`` (``from: {topic: bench.out}``) gives the published
  messages a queue to land in; the workers are started through a wrapper that does not consume
  ``sink`` so its queue count is the output (they run ``cli.main(['worker', ...])`` otherwise).
* ``handwritten``: bench/distributed_peers.py, plain aio-pika, 1 process.
* ``faststream``: bench/distributed_peers.py, FastStream subscriber → publisher, 1 process.

N messages are pre-loaded into the input queue (tieline: ``RabbitTransport.publish``; peers: a
JSON body and a ``source`` header, confirmed), then the consumer processes start. The clock
runs from the first poll (every 20 ms) that sees the input queue below N to the one that sees N
messages in the output queue. Every queue, exchange and Redis key made here is deleted after
its run; every wait is bounded (--timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aio_pika
import common
from bench_mapping import SPEC, VIEW

from bus.envelope import Envelope, new_id
from bus.transport.rabbitmq import RabbitTransport

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
BODY = VIEW["body"]
SOURCE = VIEW["headers"]["source"]
PEERS = str(common.BENCH / "distributed_peers.py")

CONFIG = """\
version: 1
settings:
  transport: rabbitmq
  amqp_url: "{amqp}"
  redis_url: "{redis}"
  broker_prefix: {prefix}
  backlog_limit: 10000000
  data_dir: {data}
flows:
  relay:
    from: {{topic: bench.in}}
    steps:
      - map: {mapping}
      - publish: bench.out
  sink:
    from: {{topic: bench.out}}
    steps:
      - map: {{fields: {{subject: body.subject}}}}
"""

# `tieline worker FILE`, minus consuming the `sink` flow (the output we count).
WORKER = ("import sys\n"
          "from bus.transport.rabbitmq import RabbitTransport as T\n"
          "c = T.consume\n"
          "T.consume = lambda s, f, h, **k: None if f == 'sink' else c(s, f, h, **k)\n"
          "import cli\n"
          "sys.exit(cli.main(['worker', sys.argv[1], '--log-level', 'warning']))\n")


async def counts(channel: aio_pika.abc.AbstractChannel, *queues: str) -> list[int]:
    out = []
    for q in queues:
        declared = await channel.declare_queue(q, passive=True)
        out.append(declared.declaration_result.message_count)
    return out


Run = tuple[float, float, tuple[float, float, float]]


def cpu_now(procs: list) -> tuple[float, float, float]:
    """CPU seconds used so far by (the consumer processes, the broker, Redis)."""
    def total(pids: list[int]) -> float:
        return sum(common.cpu_seconds(p) for p in pids)
    return (total([p.pid for p in procs]), total(common.pids_named("beam.smp")),
            total(common.pids_named("redis-server")))


async def clock(in_q: str, out_q: str, n: int, procs: list, timeout: float) -> Run:
    """(seconds from spawn to first consumption, seconds from then to N outputs, CPU seconds
    (consumers, broker, Redis) used in between)."""
    spawned = time.perf_counter()
    started = None
    cpu_at_start = (0.0, 0.0, 0.0)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        while time.perf_counter() - spawned < timeout:
            left, done = await counts(channel, in_q, out_q)
            now = time.perf_counter()
            if started is None and (left < n or done > 0):
                started, cpu_at_start = now, cpu_now(procs)
            if done >= n:
                out = await (await channel.declare_queue(out_q, passive=True)).get(no_ack=False)
                await out.nack(requeue=True)  # a look: the mapped body must be in the output
                if b'"escalate"' not in out.body:
                    raise RuntimeError(f"{out_q}: unexpected output {out.body[:200]!r}")
                used = tuple(b - a for a, b in zip(cpu_at_start, cpu_now(procs), strict=True))
                return started - spawned, now - started, used  # type: ignore[return-value]
            dead = [p.args for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"consumer exited early: {dead} (see its log in /tmp)")
            await asyncio.sleep(0.02)
    raise TimeoutError(f"{out_q}: {done}/{n} messages after {timeout}s")


async def tieline_run(n: int, workers: int, timeout: float, tmp: Path,
                      stage_times: bool = False) -> Run:
    prefix = f"bench-dist-{new_id().lower()}"
    config = tmp / f"{prefix}.yaml"
    config.write_text(CONFIG.format(amqp=AMQP_URL, redis=REDIS_URL, prefix=prefix,
                                    data=tmp / prefix, mapping=json.dumps(SPEC)))
    transport = RabbitTransport(AMQP_URL, REDIS_URL, prefix=prefix, flows=["relay", "sink"],
                                backlog_limit=10**7)
    procs: list = []
    await transport.start()
    try:
        async def load(count: int) -> None:
            for at in range(0, count, 100):
                await transport.publish([Envelope.new("relay", BODY, {"source": SOURCE})
                                         for _ in range(min(100, count - at))])

        await asyncio.gather(*(load(n // 8 + (i < n % 8)) for i in range(8)))
        worker = [str(common.BENCH / "stage_times.py")] if stage_times else ["-c", WORKER]
        procs = [common.spawn([common.PY, *worker, str(config)], cwd=tmp,
                              log=tmp / f"{prefix}-w{i}.log") for i in range(workers)]
        return await clock(transport.names.flow("relay"), transport.names.flow("sink"), n, procs,
                           timeout)
    finally:
        for p in procs:
            common.stop(p)
        for i in range(len(procs) if stage_times else 0):
            for line in (tmp / f"{prefix}-w{i}.log").read_text().splitlines():
                if line.startswith("stage "):
                    print(f"worker {i + 1}/{len(procs)} {line}", flush=True)
        await transport.close()
        await transport.drop()


async def peer_run(label: str, n: int, timeout: float, tmp: Path) -> Run:
    """A peer run; ``label`` is ``kind`` or ``kind@prefetch`` (default prefetch 16)."""
    kind, _, prefetch = label.partition("@")
    name = f"bench-peer-{new_id().lower()}"
    in_q, out_q = f"{name}.in", f"{name}.out"
    proc = None
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for q in (in_q, out_q):
            await channel.declare_queue(q, durable=True)
        try:
            body = json.dumps(BODY).encode()

            async def load(count: int) -> None:
                for _ in range(count):
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, headers={"source": SOURCE},
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                         content_type="application/json"), routing_key=in_q)

            await asyncio.gather(*(load(n // 50 + (i < n % 50)) for i in range(50)))
            proc = common.spawn([common.PY, PEERS, kind, AMQP_URL, in_q, out_q,
                                 "--prefetch", prefetch or "16"],
                                log=tmp / f"{name}-{kind}.log")
            return await clock(in_q, out_q, n, [proc], timeout)
        finally:
            if proc is not None:
                common.stop(proc)
            for q in (in_q, out_q):
                await channel.queue_delete(q)


def table(results: dict[str, list[Run]], n: int) -> tuple[str, dict[str, float]]:
    rows = ["| consumer | median msg/s | runs msg/s | median start s | CPU µs/msg: consumers "
            "| broker | Redis |", "| --- | --- | --- | --- | --- | --- | --- |"]
    med = {}
    for label, runs in results.items():
        rates = [n / secs for _, secs, _ in runs]
        med[label] = common.median(rates)
        cpu = [common.median([used[i] for _, _, used in runs]) / n * 1e6 for i in range(3)]
        rows.append(f"| {label} | {med[label]:.0f} | {', '.join(f'{r:.0f}' for r in rates)} | "
                    f"{common.median([s for s, _, _ in runs]):.2f} | "
                    + " | ".join(f"{c:.0f}" for c in cpu) + " |")
    return "\n".join(rows), med


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4", help="tieline worker counts per round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run at most")
    parser.add_argument("--peers", default="handwritten,faststream",
                        help="peer consumers per round, each `kind` or `kind@prefetch` (default 16), "
                             "e.g. handwritten,handwritten@32,faststream")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--stage-times", action="store_true",
                        help="time each delivery stage in the tieline workers (bench/stage_times.py) "
                             "and print the means; the timers cost CPU, so compare no msg/s then")
    args = parser.parse_args()
    ks = [int(k) for k in args.workers.split(",")]
    peers = [p for p in args.peers.split(",") if p]
    labels = [f"tieline x{k}" for k in ks] + peers
    results: dict[str, list[Run]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="tieline-dist-") as d:
        tmp = Path(d)
        for r in range(args.rounds):
            for label in labels:
                if label.startswith("tieline"):
                    run = await tieline_run(args.n, int(label.split("x")[1]), args.timeout, tmp,
                                            args.stage_times)
                else:
                    run = await peer_run(label, args.n, args.timeout, tmp)
                results[label].append(run)
                print(f"round {r + 1} {label:12} start {run[0]:5.2f}s  {args.n / run[1]:7.0f} msg/s",
                      flush=True)
    text, med = table(results, args.n)
    lines = [text, ""]
    if "tieline x1" in med:
        per_round = [results["tieline x1"][i][1] for i in range(args.rounds)]
        for peer in peers:
            ratios = [results[peer][i][1] / per_round[i] for i in range(args.rounds)]
            lines.append(f"- tieline (1 worker) / {peer}: median ratio {common.median(ratios):.2f} "
                         f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})")
        for k in ks[1:]:
            lines.append(f"- tieline {k} workers / 1 worker: {med[f'tieline x{k}'] / med['tieline x1']:.2f}")
    body = (f"{args.n} messages pre-loaded per run, {args.rounds} rounds alternated; peers: "
            "prefetch 16 unless named `@N`; tieline: the flow's default concurrency 16 (16 "
            "handlers at once, prefetch 32 to admit the next ones meanwhile); msg/s = N / (first "
            "consumption → N in the output queue), polled every 20 ms; CPU per message over the "
            "same span from /proc (consumers' processes, beam.smp, redis-server).\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_results:
        common.append_results("Distributed mode: consume → map → confirmed publish → ack (RabbitMQ)",
                              [common.invocation()], body)


if __name__ == "__main__":
    asyncio.run(main())
