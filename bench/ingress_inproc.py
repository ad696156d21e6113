"""Ingress without sockets: the ASGI app called directly, CPU per request of the app alone.

wrk and uvicorn cost the same for every server in bench/ingress.py, and on 2 cores they share
the machine with the server under test, so its figures mix the app's cost with theirs. This
drives the app in process — ``--concurrency`` requests in flight, each a pre-signed webhook
with a first-time id, through a fake ASGI receive/send — and reports process CPU (all threads:
the loop and the SQLite writer, and the loop's thread alone) per request, for tieline's app (``tieline run`` minus the
consumer) and for ``bare_app.durable_app`` (the durable floor). ``--profile`` adds a cProfile
of the tieline run (loop thread only) with the top functions by own and inclusive time.

    .venv/bin/python bench/ingress_inproc.py --rounds 5 -n 4000
    .venv/bin/python bench/ingress_inproc.py -n 4000 --profile --rounds 1 --apps tieline

Prints only; nothing is appended to RESULTS.md (copy figures there with the command).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402


def requests(n: int, signer: c.Signer, tag: str,
             size: int = 0) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    out = []
    for i in range(n):
        mid = f"msg_{tag}_{i}"
        body = c.order(mid, size=size)
        headers = [(k.encode(), v.encode()) for k, v in signer.headers(mid, body).items()]
        headers += [(b"host", b"127.0.0.1:8080"), (b"content-length", str(len(body)).encode())]
        out.append((headers, body))
    return out


def scope_of(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": c.HOOK, "raw_path": c.HOOK.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080)}


async def drive(app, reqs: list, concurrency: int) -> dict[int, int]:
    """Send every request through ``app``, ``concurrency`` at a time; count the statuses."""
    statuses: dict[int, int] = {}
    queue = iter(reqs)

    async def one(headers, body) -> None:
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no disconnect while the app answers
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope_of(headers), receive, send)

    async def lane() -> None:
        for headers, body in queue:
            await one(headers, body)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return statuses


async def run_tieline(tmp: Path, reqs: list, concurrency: int, profile: cProfile.Profile | None):
    from bus.http.app import build_app
    from bus.runtime import Runtime

    config = c.write_config(tmp, 8080, "http://127.0.0.1:9")
    runtime = Runtime.from_file(str(config))
    await runtime.start(consume=False)
    try:
        app = build_app(runtime)
        await drive(app, reqs[:200], concurrency)  # warm-up: caches, validators, first commits
        return await measured(app, reqs[200:], concurrency, profile)
    finally:
        await runtime.stop()


async def run_bare(tmp: Path, reqs: list, concurrency: int, profile: cProfile.Profile | None):
    os.environ["BARE_DURABLE_DB"] = str(tmp / "bare.db")
    from bare_app import durable_app

    async with durable_app.router.lifespan_context(durable_app):
        await drive(durable_app, reqs[:200], concurrency)
        return await measured(durable_app, reqs[200:], concurrency, profile)


def thread_cpu() -> dict[int, float]:
    """CPU seconds per thread of this process, from /proc (the loop's thread is this one)."""
    tck = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tck
    return out


async def measured(app, reqs: list, concurrency: int, profile: cProfile.Profile | None):
    threads = thread_cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    statuses = await drive(app, reqs, concurrency)
    if profile is not None:
        profile.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = thread_cpu()
    loop = after.get(threading.get_native_id(), 0.0) - threads.get(threading.get_native_id(), 0.0)
    return {"us_per_req": cpu / len(reqs) * 1e6, "req_s": len(reqs) / wall, "statuses": statuses,
            "loop_us": loop / len(reqs) * 1e6, "others_us": (cpu - loop) / len(reqs) * 1e6}


def one_round(name: str, n: int, concurrency: int, profile: cProfile.Profile | None, tag: str,
              size: int = 0):
    import uvloop

    reqs = requests(n + 200, c.Signer(), tag, size)
    c.tune_process()
    with tempfile.TemporaryDirectory(prefix="tieline-inproc-") as d:
        runner = run_tieline if name == "tieline" else run_bare
        return uvloop.run(runner(Path(d), reqs, concurrency, profile))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=4000, help="measured requests per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (wrk -c)")
    p.add_argument("--apps", default="tieline,bare-durable")
    p.add_argument("--profile", action="store_true", help="cProfile the tieline runs (loop thread)")
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--body-bytes", type=int, default=0,
                   help="pad each order with a call transcript to this many bytes")
    args = p.parse_args()
    from bus.logs import configure

    configure("warning")
    apps = args.apps.split(",")
    runs: dict[str, list[dict]] = {a: [] for a in apps}
    profile = cProfile.Profile() if args.profile else None
    for r in range(args.rounds):
        for a in apps:
            result = one_round(a, args.n, args.concurrency, profile if a == "tieline" else None,
                               f"{a}{r}{time.time_ns()}", args.body_bytes)
            runs[a].append(result)
            print(f"round {r + 1} {a}: {result['us_per_req']:.0f} µs CPU/req (loop thread "
                  f"{result['loop_us']:.0f}, other threads {result['others_us']:.0f}), "
                  f"{result['req_s']:.0f} req/s, statuses {result['statuses']}", flush=True)
    for a in apps:
        us = [x["us_per_req"] for x in runs[a]]
        print(f"{a}: median {statistics.median(us):.0f} µs CPU/req (runs {', '.join(f'{u:.0f}' for u in us)})")
    if profile is not None:
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).strip_dirs().sort_stats(key).print_stats(args.top)
            print(out.getvalue())


if __name__ == "__main__":
    main()
