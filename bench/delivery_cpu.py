"""Delivery alone: CPU per delivered message in embedded mode (SQLite, sync=full).

The bench flow (``common.FLOWS``: map → ``to: sink.request``), the latency sink in its own
process. Each run is a fresh child process: it publishes N events through Ingress with the
consumer off (not measured), loads the outbound client as a serving bus does, then starts the
runner and measures its own CPU (all threads, and per thread) until the backlog is empty.

``--against REV`` alternates runs of this tree with runs of git revision REV (its ``bus``,
``connectors`` and ``cli.py``, checked out into a temporary directory): an A/B in one session.

Run: .venv/bin/python bench/delivery_cpu.py [--rounds 5] [--n 4000] [--against HEAD~1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process (name: seconds), from /proc."""
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            name = open(f"/proc/self/task/{tid}/comm").read().strip()
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[f"{name}:{tid}"] = (int(f[11]) + int(f[12])) / tck
    return out


def child(n: int, sink_port: int, profile: str | None, concurrency: int | None) -> None:
    import common as c
    import uvloop

    from bus.logs import configure
    from bus.runtime import Runtime
    from connectors.base import InboundEvent

    configure("warning", cache=True)  # as `tieline run` does
    tmp = Path(tempfile.mkdtemp(prefix="delcpu-"))
    cfg = c.write_config(tmp / "bus", c.free_port(), f"http://127.0.0.1:{sink_port}",
                         concurrency=concurrency)

    async def main() -> dict:
        rt = Runtime.from_file(cfg)
        await rt.start(consume=False)
        import orjson
        batch = 256
        for lo in range(0, n, batch):
            evs = []
            for i in range(lo, min(n, lo + batch)):
                body = orjson.loads(c.order(f"m{i}"))
                evs.append(InboundEvent("order.created", body, dedupe_key=f"msg_{i}"))
            await asyncio.gather(*(rt.ingress.admit("vendor", e) for e in evs))
        assert await rt.transport.backlog() == n
        warm_up = getattr(rt.http, "warm_up", None)  # load aiohttp before measuring, as a
        if warm_up is not None:                       # serving bus does once it listens
            warm_up().join()
        c.tune_process()
        import gc
        gc.collect()
        prof = spy = None
        if profile and profile.endswith(".raw"):  # py-spy, sampling the delivery phase only
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "-r", "500",
                                    "-f", "raw", "-o", profile, "--duration", "6", "--pid",
                                    str(os.getpid())], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)
        elif profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        threads0 = thread_cpu()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        rt.runner.start()
        while await rt.transport.backlog() > 0:
            await asyncio.sleep(0.005)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        threads = {k: (v - threads0.get(k, 0)) / n * 1e6 for k, v in thread_cpu().items()}
        if spy:
            spy.wait(60)
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        await rt.stop()
        return {"cpu_us": cpu / n * 1e6, "wall_s": wall, "rate": n / wall,
                "threads_us": {k: round(v) for k, v in threads.items() if v > 1}}

    out = uvloop.run(main())
    print(json.dumps(out))


def run_child(tree: Path, n: int, sink_port: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--child", "--n", str(n), "--sink-port", str(sink_port)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                         cwd=tempfile.gettempdir())
    if out.returncode:
        raise SystemExit(f"run in {tree} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import common as c

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="messages per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--against", metavar="REV", help="git revision to alternate with")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--profile", help="child only: py-spy raw (*.raw) or cProfile output")
    args = ap.parse_args()
    if args.child:
        child(args.n, args.sink_port, args.profile, None)
        return
    port = c.free_port()
    sink = c.start_sink(port)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tieline-delivery-") as tmp:
        trees = {"this tree": ROOT}
        if args.against:
            trees[args.against] = c.checkout(args.against, Path(tmp))
        try:
            for r in range(args.rounds):
                names = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in names:
                    got = run_child(trees[name], args.n, port)
                    results.setdefault(name, []).append(got)
                    print(f"round {r + 1} {name}: {got['cpu_us']:.0f} µs/msg, "
                          f"{got['rate']:.0f} msg/s", flush=True)
        finally:
            c.stop(sink)
    rows = ["| tree | median CPU µs/msg | runs µs/msg | median msg/s (delivery alone) |",
            "| --- | --- | --- | --- |"]
    for name, runs in results.items():
        cpu = [x["cpu_us"] for x in runs]
        rows.append(f"| {name} | {statistics.median(cpu):.0f} | "
                    f"{', '.join(f'{x:.0f}' for x in cpu)} | "
                    f"{statistics.median(x['rate'] for x in runs):.0f} |")
    body = (f"{args.n} messages per run, {args.rounds} rounds alternated; CPU of the bus "
            "process (all threads) from the runner's start to an empty backlog.\n\n"
            + "\n".join(rows))
    if args.against:
        a, b = (statistics.median(x["cpu_us"] for x in results[k]) for k in trees)
        body += f"\n\n- this tree / {args.against}: {a / b:.2f}× the CPU per message"
    c.append_results("Delivery alone: CPU per delivered message (embedded)", [c.invocation()],
                     body)


if __name__ == "__main__":
    main()
