"""Ingress throughput: signed webhook → verified → committed (SQLite, sync=full) → 202.

Servers on loopback, measured back to back with wrk in each round (order rotates):
  * tieline: ``tieline run`` on a bench flows.yaml (bench/common.py FLOWS) whose flow maps the
    message and POSTs it to a latency sink in its own process, so the backlog does not grow;
  * tieline-no-delivery: the same bus with its consumer off (bench/common.py ingress-only):
    ingress alone, nothing competing for the event loop;
  * bare: bench/bare_app.py (Starlette + uvicorn, parses the JSON, answers 202, no bus);
  * bare-durable: bench/bare_app.py's durable_app, the same stack doing the least a durable
    receiver must: verify the signature, parse, INSERT into SQLite (WAL, synchronous=FULL,
    group commit on one writer thread), 202 after COMMIT — the floor of any durable receiver;
  * nodered: bench/nodered (http in → change (JSONata, same mapping) → http response 202).

wrk repeats one request unless told otherwise, and tieline answers a repeated webhook-id 200
as a duplicate (another code path). So each round signs a fresh pool of unique requests
(``--pool`` lines: id, timestamp, signature, body) that bench/post_pool.lua sends once each;
repeats, if the pool runs out, are counted apart and left out of tieline's rate.

Run: .venv/bin/python bench/ingress.py [--rounds 3] [--duration 10] [--connections 32]
     [--servers bare,tieline,tieline-no-delivery,nodered,bare-durable]
     [--profile [--profile-target tieline-no-delivery]]  (py-spy flame graph to /tmp)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import common as c
import httpx

NODERED = c.BENCH / "nodered"


def write_pool(path: Path, n: int, signer: c.Signer, size: int = 0) -> None:
    tag = uuid.uuid4().hex[:8]
    ts = int(time.time())
    with path.open("w") as f:
        for i in range(n):
            mid = f"msg_{tag}_{i}"
            body = c.order(mid, size=size)
            h = signer.headers(mid, body, ts)
            f.write(f"{mid}\t{ts}\t{h['webhook-signature']}\t{body.decode()}\n")
        f.flush()
        os.fsync(f.fileno())  # written back now, not during the run (the servers fsync too)


def wrk_cmd(port: int, pool: Path, args: argparse.Namespace, secs: int = 0) -> list[str]:
    secs = secs or args.duration
    return ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{secs}s",
            "--timeout", "5s", "-s", str(c.BENCH / "post_pool.lua"), f"http://127.0.0.1:{port}",
            "--", str(pool), str(args.threads), c.HOOK, *(["stream"] if args.stream else [])]


def run_wrk(cmd: list[str], timeout: float) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    m = re.search(r"^RESULT (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no RESULT line:\n{out}")
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    r["ok_rps"] = r["n202"] / secs  # only first-time, committed requests
    r["all_rps"] = r["requests"] / secs
    return r


def start_servers(tmp: Path, args: argparse.Namespace,
                  servers: dict[str, tuple[int, subprocess.Popen]]) -> None:
    """Start each server into ``servers`` as it comes up, so the caller stops the ones started
    even when a later one fails to start."""
    sink_port = c.free_port()
    servers["sink"] = (sink_port, c.start_sink(sink_port, tmp / "sink.log"))
    port = c.free_port()
    cfg = c.write_config(tmp / "tieline", port, f"http://127.0.0.1:{sink_port}", sync=args.sync)
    servers["tieline"] = (port, c.start_tieline(cfg, port, tmp / "tieline.log"))
    if args.against:  # `tieline run` of that revision, on its own sink
        name, sink_port2 = f"tieline@{args.against}", c.free_port()
        servers["sink2"] = (sink_port2, c.start_sink(sink_port2, tmp / "sink2.log"))
        port = c.free_port()
        cfg = c.write_config(tmp / name, port, f"http://127.0.0.1:{sink_port2}", sync=args.sync)
        env = {"PYTHONPATH": str(c.checkout(args.against, tmp / "against"))}
        servers[name] = (port, c.start_tieline(cfg, port, tmp / f"{name}.log", env=env))
    for name, extra in (("tieline-no-delivery", []), ("tieline-no-delivery-asgi", ["asgi"]),
                        (f"tieline-no-delivery@{args.against}", [])):
        if name not in args.servers:
            continue
        port = c.free_port()
        cfg = c.write_config(tmp / name, port, f"http://127.0.0.1:{sink_port}", sync=args.sync)
        env = {"PYTHONPATH": str(c.checkout(args.against, tmp / "against"))} if "@" in name else {}
        proc = c.spawn([c.PY, str(c.BENCH / "common.py"), "ingress-only", str(cfg), str(port),
                        *extra], cwd=cfg.parent, env=env, log=tmp / f"{name}.log")
        c.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        servers[name] = (port, proc)
    for name in ("tieline-rabbit", "tieline-rabbit-x2", "tieline-serve", "tieline-serve-x2"):
        if name in args.servers:
            servers.update(start_serve_servers(tmp, name, f"http://127.0.0.1:{sink_port}", args))
    port = c.free_port()
    bare = c.spawn([c.PY, "-m", "uvicorn", "bare_app:app", "--app-dir", str(c.BENCH), "--host",
                    "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
                   log=tmp / "bare.log")
    c.wait_http(f"http://127.0.0.1:{port}/healthz", bare)
    servers["bare"] = (port, bare)
    if "bare-durable" in args.servers:
        port = c.free_port()
        proc = c.spawn([c.PY, "-m", "uvicorn", "bare_app:durable_app", "--app-dir", str(c.BENCH),
                        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                        "--no-access-log"], env={"BARE_DURABLE_DB": str(tmp / "bare-durable.db")},
                       log=tmp / "bare-durable.log")
        c.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        servers["bare-durable"] = (port, proc)
    if "nodered" in args.servers:
        port = c.free_port()
        nr = c.spawn([str(NODERED / "node_modules" / ".bin" / "node-red"), "-u", str(NODERED), "-s",
                      str(NODERED / "settings.js"), "-p", str(port), "flows.json"],
                     log=tmp / "nodered.log")
        c.wait_http(f"http://127.0.0.1:{port}/healthz", nr)
        servers["nodered"] = (port, nr)


def start_serve_servers(tmp: Path, name: str, sink_url: str,
                        args: argparse.Namespace) -> dict[str, tuple[int, subprocess.Popen]]:
    """``tieline serve`` (ingress only: committed, 202) on RabbitMQ (``tieline-rabbit*``:
    publish confirmed) or on a shared embedded file (``tieline-serve*``), one process or two
    sharing the port (SO_REUSEPORT); no worker, the queue just fills."""
    count = 2 if name.endswith("-x2") else 1
    port = c.free_port()
    cfg = c.write_config(tmp / name, port, sink_url, sync=args.sync)
    if name.startswith("tieline-rabbit"):
        prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        c.use_rabbitmq(cfg, prefix)
        RABBIT_PREFIXES.append(prefix)
    procs = []
    for i in range(count):
        proc = c.spawn([c.TIELINE, "serve", str(cfg), "--port", str(port), "--log-level", "warning"],
                       cwd=cfg.parent, log=tmp / f"{name}-{i}.log")
        c.wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        procs.append(proc)
    out = {name: (port, procs[0])}
    for i, proc in enumerate(procs[1:], 2):
        out[f"{name}#{i}"] = (port, proc)  # stopped with the others; not measured on its own
    return out


RABBIT_PREFIXES: list[str] = []


def drop_rabbit_queues() -> None:
    """Delete the queues, exchanges and Redis keys the RabbitMQ servers made."""
    for prefix in RABBIT_PREFIXES:
        c.drop_prefix(prefix)


def profile(servers: dict, tmp: Path, args: argparse.Namespace, signer: c.Signer) -> list[str]:
    """py-spy the tieline process under wrk: a flame graph SVG, then collapsed stacks summarised."""
    port, proc = servers[args.profile_target]
    pyspy = str(c.ROOT / ".venv" / "bin" / "py-spy")
    lines = []
    for fmt, out in (("flamegraph", f"/tmp/{args.profile_target}-ingress.svg"), ("raw", str(tmp / "stacks.txt"))):
        pool = tmp / "pool-prof.tsv"
        write_pool(pool, args.pool, signer, args.body_bytes)
        # --gil: sample only the thread holding the GIL, i.e. where the CPU goes
        spy = subprocess.Popen([pyspy, "record", "--pid", str(proc.pid), "--format", fmt, "-o", out,
                                "--duration", str(args.duration), "--rate", "200", "--nonblocking",
                                "--gil"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_wrk(wrk_cmd(port, pool, args), args.duration + 30)
        spy.wait(args.duration + 30)
    stacks = []
    for line in Path(tmp / "stacks.txt").read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        # fold line numbers away: one entry per function
        stacks.append(([re.sub(r":\d+\)$", ")", f) for f in stack.split(";")], int(n)))
    Path(f"/tmp/{args.profile_target}-ingress-stacks.txt").write_text(
        "\n".join(";".join(f) + f" {n}" for f, n in stacks))
    total = sum(n for _, n in stacks)
    lines.append(f"py-spy of **{args.profile_target}**: {total} samples at 200 Hz over "
                 f"{args.duration} s of wrk load; flame graph /tmp/{args.profile_target}-ingress.svg, "
                 f"collapsed stacks /tmp/{args.profile_target}-ingress-stacks.txt")
    for title, marker in (("whole process", ""), ("ingress (under uvicorn run_asgi)", "run_asgi"),
                          ("delivery (under FlowRunner.handle)", "FlowRunner.handle"),
                          ("SQLite writer thread", "GroupCommitWriter")):
        part = [(f, n) for f, n in stacks if any(marker in x for x in f)]
        sub = sum(n for _, n in part)
        self_t: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        for f, n in part:
            self_t[f[-1]] += n
            for x in set(f):
                incl[x] += n
        lines.append(f"\n**{title}**: {sub / total:.1%} of samples. Top self time "
                     "(share of this part):\n")
        lines += [f"- {n / sub:5.1%}  {f}" for f, n in self_t.most_common(12)]
        if marker:
            lines.append("\nTop inclusive (share of this part):\n")
            lines += [f"- {n / sub:5.1%}  {f}" for f, n in incl.most_common(30)
                      if n < sub][:15]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load per server")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--pool", type=int, default=40_000, help="pre-signed requests per run")
    ap.add_argument("--sync", default="full", choices=["full", "normal"])
    ap.add_argument("--body-bytes", type=int, default=0,
                    help="pad each order with a call transcript to this many bytes (default: the "
                         "plain order, ~220 bytes)")
    ap.add_argument("--stream", action="store_true",
                    help="wrk reads the pool as it sends instead of holding it (on with "
                         "--body-bytes: such a pool can be gigabytes)")
    ap.add_argument("--servers", default="bare,tieline,tieline-no-delivery,nodered",
                    help="comma-separated; tieline-no-delivery = the bus with its consumer off; "
                         "tieline-no-delivery-asgi = the same with webhooks through uvicorn's "
                         "ASGI cycle and Starlette (no fast path); "
                         "bare-durable = bare_app.py's durable floor (verify, SQLite commit); "
                         "tieline-rabbit / tieline-rabbit-x2 = `tieline serve` on RabbitMQ, "
                         "tieline-serve / tieline-serve-x2 = `tieline serve` on a shared embedded "
                         "file, 1 or 2 processes on one port")
    ap.add_argument("--against", metavar="REV",
                    help="also measure tieline@REV and tieline-no-delivery@REV: git revision "
                         "REV's bus and connectors (an A/B in one run)")
    ap.add_argument("--profile", action="store_true", help="py-spy instead of the comparison")
    ap.add_argument("--profile-target", default="tieline",
                    choices=["tieline", "tieline-no-delivery"])
    args = ap.parse_args()
    args.stream = args.stream or args.body_bytes > 0
    args.servers = args.servers.split(",") if isinstance(args.servers, str) else args.servers
    args.servers = [*dict.fromkeys(["tieline", *args.servers])]  # tieline is always measured
    if args.against:
        args.servers += [f"tieline@{args.against}", f"tieline-no-delivery@{args.against}"]
    signer = c.Signer()
    with tempfile.TemporaryDirectory(prefix="tieline-bench-") as d:
        tmp = Path(d)
        servers: dict[str, tuple[int, subprocess.Popen]] = {}
        try:
            start_servers(tmp, args, servers)
            if args.profile:
                c.append_results(f"Ingress profile (py-spy, {args.profile_target})", [c.invocation()],
                                 "\n".join(profile(servers, tmp, args, signer)))
                return
            names = [n for n in args.servers if n in servers]
            for name in names:  # warm up (JITs, caches, SQLite pages); not counted
                pool = tmp / "pool.tsv"
                write_pool(pool, args.pool // 4, signer, args.body_bytes)
                run_wrk(wrk_cmd(servers[name][0], pool, args, args.warmup), args.warmup + 60)
            runs: dict[str, list[dict]] = {n: [] for n in names}
            cmds = []
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    pool = tmp / "pool.tsv"
                    write_pool(pool, args.pool, signer, args.body_bytes)  # fresh ids and timestamps every run
                    cmd = wrk_cmd(servers[name][0], pool, args)
                    if rnd == 0:
                        cmds.append(f"# {name}\n" + " ".join(cmd).replace(f"{c.BENCH.parent}/", ""))
                    cpu0 = c.cpu_seconds(servers[name][1].pid)
                    r = run_wrk(cmd, args.duration + 60)
                    r["cpu_us"] = (c.cpu_seconds(servers[name][1].pid) - cpu0) / max(r["n202"], 1) * 1e6
                    runs[name].append(r)
                    print(f"round {rnd + 1} {name:19s} {r['ok_rps']:8.0f} req/s (202)  "
                          f"cpu {r['cpu_us']:6.0f} µs/req  p50 {r['p50_us'] / 1000:6.1f} ms  p99 {r['p99_us'] / 1000:6.1f} ms  "
                          f"non-202 {r['n200'] + r['nother']}  errors {r['errors_timeout'] + r['errors_read']}")
            backlog = httpx.get(f"http://127.0.0.1:{servers['tieline'][0]}/readyz").json()
            rss = {n: c.rss_kib(servers[n][1].pid) // 1024 for n in names}
        finally:
            for _, proc in servers.values():
                c.stop(proc)
            drop_rabbit_queues()
    c.append_results("Ingress: signed webhook → committed → 202", [c.invocation(), *cmds],
                     report(runs, args, backlog, rss))


def report(runs: dict[str, list[dict]], args: argparse.Namespace, backlog: dict, rss: dict) -> str:
    out = [f"wrk -t{args.threads} -c{args.connections}, {args.duration} s per run, {args.rounds} "
           f"rounds alternated; sync={args.sync}; body {len(c.order('msg_x', size=args.body_bytes)):,} "
           f"bytes; pool {args.pool:,}{' streamed' if args.stream else ''}; 202 req/s (first-time "
           "ids only for the servers that dedupe).\n",
           "| server | median req/s | runs req/s | median CPU µs/req | median p50 ms | median p99 ms "
           "| non-202 | RSS MiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rs in runs.items():
        each = ", ".join(f"{r['ok_rps']:.0f}" for r in rs)
        out.append(f"| {name} | {c.median([r['ok_rps'] for r in rs]):.0f} | {each} | "
                   f"{c.median([r['cpu_us'] for r in rs]):.0f} | "
                   f"{c.median([r['p50_us'] / 1000 for r in rs]):.1f} | "
                   f"{c.median([r['p99_us'] / 1000 for r in rs]):.1f} | "
                   f"{sum(r['n200'] + r['nother'] for r in rs)} | {rss[name]} |")
    t = [r["ok_rps"] for r in runs["tieline"]]
    out.append("")
    for other in ("bare", "bare-durable", "nodered", "tieline-no-delivery"):
        if other in runs:
            ratios = [a / b["ok_rps"] for a, b in zip(t, runs[other], strict=True)]
            out.append(f"- tieline / {other}: median ratio {c.median(ratios):.2f} "
                       f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    for a, b, why in (("bare-durable", "bare", " (what durability alone costs on this stack)"),
                      ("tieline-no-delivery", "bare-durable", " (ingress alone vs the floor)"),
                      ("tieline-no-delivery", "bare", " (ingress alone vs the bare endpoint)"),
                      ("tieline-no-delivery", "nodered", " (ingress alone vs Node-RED)"),
                      ("tieline-no-delivery", "tieline-no-delivery-asgi",
                       " (the webhook fast path vs the ASGI route)"),
                      ("tieline-no-delivery", f"tieline-no-delivery@{args.against}",
                       " (this tree vs that revision)"),
                      ("tieline", f"tieline@{args.against}", " (this tree vs that revision)")):
        if a in runs and b in runs:
            ratios = [x["ok_rps"] / y["ok_rps"] for x, y in zip(runs[a], runs[b], strict=True)]
            cpu = [x["cpu_us"] / y["cpu_us"] for x, y in zip(runs[a], runs[b], strict=True)]
            out.append(f"- {a} / {b}{why}: median ratio {c.median(ratios):.2f} "
                       f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}); CPU per "
                       f"request {c.median(cpu):.2f}×")
    for name, rs in runs.items():
        if repeats := sum(r["n200"] for r in rs):
            out.append(f"- WARNING: {name} answered {repeats} repeats of the pool as duplicates "
                       "(200): its 202 rate is capped by the pool; rerun with a larger --pool")
    out.append(f"- tieline backlog after the runs: {backlog.get('backlog')}")
    if "tieline-rabbit" in runs and "tieline-rabbit-x2" in runs:
        ratios = [b["ok_rps"] / a["ok_rps"] for a, b in
                  zip(runs["tieline-rabbit"], runs["tieline-rabbit-x2"], strict=True)]
        out.append(f"- RabbitMQ transport, 2 `tieline serve` processes on one port / 1: median "
                   f"{c.median(ratios):.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    if "tieline-serve" in runs and "tieline-serve-x2" in runs:
        ratios = [b["ok_rps"] / a["ok_rps"] for a, b in
                  zip(runs["tieline-serve"], runs["tieline-serve-x2"], strict=True)]
        out.append(f"- Embedded transport, 2 `tieline serve` processes on one port and one file / 1: "
                   f"median {c.median(ratios):.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    out.append("- `tieline run` (tieline, tieline-no-delivery) is one process with the file to "
               "itself; tieline-serve* and tieline-rabbit* are `tieline serve` processes without "
               "a worker. A *-x2 CPU figure is its first process only.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
