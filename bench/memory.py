"""Memory over a fixed-rate run, then the backlog bound with the sink down.

Phase 1: the e2e set-up (bench/e2e.py) at ``--rate`` msg/s for ``--duration`` s (default 300);
tieline's RSS is read from /proc every second. Reports the RSS after the warm-up (``--warmup``
s, default 10% of the run) and at the end, and the growth between them. The process runs under
``/usr/bin/time -v`` whose "Maximum resident set size" is reported too.

Phase 2: a second bus with ``backlog_limit: --limit`` (default 2000) and the sink answering 503
(``--sink stalled``: hanging past the flow's 5 s timeout, so new messages pile up before their
first try, bodies whole). Load at ``--rate`` for ``--down-duration`` s: the backlog must stop at
the limit and ingress answer 503 with Retry-After; counts the 503s and checks the backlog never
passes the limit. ``--body-bytes`` pads each order (a call transcript) to show what large
messages cost in memory.

Run: .venv/bin/python bench/memory.py [--duration 300] [--rate 200] [--limit 2000]
     [--body-bytes N] [--sink-down-only] [--pythonpath DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import common as c
import e2e
import httpx


def start_timed(cfg: Path, port: int, tmp: Path, pythonpath: str | None = None) -> tuple:
    """``tieline run`` under /usr/bin/time -v; returns (time's process, tieline's pid)."""
    log = tmp / f"time-{port}.log"
    env = {"PYTHONPATH": pythonpath} if pythonpath else None
    proc = c.spawn(["/usr/bin/time", "-v", c.TIELINE, "run", str(cfg), "--port", str(port),
                    "--log-level", "warning"], cwd=cfg.parent, log=log, env=env)
    c.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    child = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
    return proc, child, log


def stop_timed(proc, pid: int) -> None:  # noqa: ANN001
    """SIGTERM tieline only, so /usr/bin/time lives to print its report; then make sure."""
    try:
        os.kill(pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    c.stop(proc)


def max_rss_mib(log: Path) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def phase1(tmp: Path, args: argparse.Namespace, sink_port: int) -> list[str]:
    port = c.free_port()
    cfg = c.write_config(tmp / "p1", port, f"http://127.0.0.1:{sink_port}")
    proc, pid, log = start_timed(cfg, port, tmp, args.pythonpath)
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def tick(_elapsed: float) -> None:
        samples.append((time.perf_counter() - t0, c.rss_kib(pid)))

    try:
        load = asyncio.run(e2e.generate(f"http://127.0.0.1:{port}", args.rate, args.duration,
                                        on_tick=tick, size=args.body_bytes))
        stats = e2e.drain(sink_port, load.accepted, f"http://127.0.0.1:{port}")
    finally:
        stop_timed(proc, pid)
    warm = args.warmup if args.warmup is not None else args.duration / 10
    after = [kib for t, kib in samples if t >= warm]
    start_kib, end_kib = (after[0], after[-1]) if after else (0, 0)
    growth = (end_kib - start_kib) / start_kib * 100 if start_kib else float("nan")
    every = max(1, len(samples) // 10)
    series = ", ".join(f"{t:.0f}s {kib / 1024:.1f}" for t, kib in samples[::every])
    return [f"Phase 1: {args.rate:.0f} msg/s for {args.duration:.0f} s; sent {load.sent}, 202 "
            f"{load.accepted}, delivered {stats['count']}; statuses {dict(load.statuses)}.\n",
            f"- RSS after warm-up ({warm:.0f} s): {start_kib / 1024:.1f} MiB; at the end: "
            f"{end_kib / 1024:.1f} MiB; growth {growth:+.1f}%",
            f"- peak RSS (/usr/bin/time -v): {max_rss_mib(log):.1f} MiB",
            f"- samples (s MiB): {series}"]


def phase2(tmp: Path, args: argparse.Namespace, sink_port: int) -> list[str]:
    httpx.post(f"http://127.0.0.1:{sink_port}/_{'stall' if args.sink == 'stalled' else 'down'}",
               timeout=5)
    port = c.free_port()
    cfg = c.write_config(tmp / "p2", port, f"http://127.0.0.1:{sink_port}", backlog_limit=args.limit)
    proc, pid, log = start_timed(cfg, port, tmp, args.pythonpath)
    try:
        load = asyncio.run(e2e.generate(f"http://127.0.0.1:{port}", args.rate, args.down_duration,
                                        size=args.body_bytes))
        rss = c.rss_kib(pid) / 1024
    finally:
        stop_timed(proc, pid)
        httpx.post(f"http://127.0.0.1:{sink_port}/_up", timeout=5)
    peak = max(load.backlog, default=-1)
    held = "held" if 0 <= peak <= args.limit else "NOT held"
    how = ("stalled (no answer within the flow's 5 s timeout)" if args.sink == "stalled"
           else "down (503)")
    return [f"\nPhase 2: sink {how}, backlog_limit {args.limit}, {args.rate:.0f} msg/s for "
            f"{args.down_duration:.0f} s; body {len(c.order('m', 0.0, args.body_bytes)):,} bytes; "
            f"PYTHONPATH={args.pythonpath or '-'}.\n",
            f"- answers: {dict(load.statuses)}; 503s {load.statuses[503]}, of which with "
            f"Retry-After {load.retry_after}",
            f"- backlog peak (sampled each second) {peak} vs limit {args.limit}: bound {held}",
            f"- RSS at the end: {rss:.1f} MiB; peak (/usr/bin/time -v) {max_rss_mib(log):.1f} MiB"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--down-duration", type=float, default=20)
    ap.add_argument("--body-bytes", type=int, default=0,
                    help="pad each order with a call transcript to this many bytes")
    ap.add_argument("--sink-down-only", action="store_true", help="phase 2 only")
    ap.add_argument("--sink", default="down", choices=["down", "stalled"],
                    help="phase 2: the sink answers 503 at once (down), or hangs past the "
                         "flow's timeout (stalled: new messages pile up before their first try)")
    ap.add_argument("--pythonpath", default=None,
                    help="experiment: PYTHONPATH for the bus, e.g. a worktree of another revision")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tieline-mem-") as d:
        tmp = Path(d)
        sink_port = c.free_port()
        sink = c.start_sink(sink_port, tmp / "sink.log")
        try:
            lines = [] if args.sink_down_only else phase1(tmp, args, sink_port)
            print("\n".join(lines))
            down = phase2(tmp, args, sink_port)
            print("\n".join(down))
            lines += down
        finally:
            c.stop(sink)
    c.append_results("Memory: RSS over a fixed-rate run; backlog bound with the sink down",
                     [c.invocation()], "\n".join(lines))


if __name__ == "__main__":
    main()
