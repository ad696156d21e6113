"""Shared helpers for the benchmarks: processes, the bench config, signing, a latency sink, results.

Not a test module. Every server binds 127.0.0.1 only and every helper that waits has a timeout.
The latency sink (``sink_app``) runs in its own process:
``uvicorn common:sink_app --app-dir bench --port P`` (see :func:`start_sink`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = str(ROOT / ".venv" / "bin" / "python")
TIELINE = str(ROOT / ".venv" / "bin" / "tieline")
RESULTS = BENCH / "RESULTS.md"
SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWZvci10aWVsaW5lLWJlbmNobWFya3M="  # base64 of a fixed string
HOOK = "/hooks/vendor"

# The bench flow: one Standard Webhooks connector, one flow: map, then POST to the sink.
FLOWS = """\
version: 1
settings:
  data_dir: {data_dir}
  backlog_limit: {backlog_limit}
  sync: {sync}
  http: {{host: 127.0.0.1, port: {port}}}
  outbound: {{allow: [127.0.0.1]}}  # the sink is on loopback (SSRF guard)
connectors:
  vendor:
    type: webhook
    settings: {{verify: standard, secret: "{secret}", event_field: type, events: [order.created]}}
  sink:
    type: http
    settings: {{base_url: "{sink_url}", timeout: 5}}
flows:
  relay:
    from: {{connector: vendor, event: order.created}}
    retry: {{attempts: 1000, initial_delay: 200ms, max_delay: 2s, deadline: 1h}}
{concurrency}    steps:
      - map:
          fields:
            order: body.data.id
            total: {{expr: body.data.total, default: 0}}
            sent: body.data.sent
      - to: sink.request
        map:
          fields:
            method: {{const: POST}}
            path: {{const: /orders}}
            json: body
"""


def write_config(directory: Path, port: int, sink_url: str, *, backlog_limit: int = 1_000_000,
                 sync: str = "full", concurrency: int | None = None) -> Path:
    """Write the bench flows.yaml into ``directory`` and return its path.

    ``concurrency``: the flow's consumer concurrency (messages in delivery at once); None
    leaves the default (16)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "flows.yaml"
    path.write_text(FLOWS.format(data_dir=directory / "data", backlog_limit=backlog_limit, sync=sync,
                                 port=port, secret=SECRET, sink_url=sink_url,
                                 concurrency=f"    concurrency: {concurrency}\n" if concurrency else ""))
    return path


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"  # the machine's RabbitMQ and Redis
REDIS_URL = "redis://127.0.0.1:6379/0"
RABBIT_SETTINGS = f"""settings:
  transport: rabbitmq
  amqp_url: "{AMQP_URL}"
  redis_url: "{REDIS_URL}"
  broker_prefix: {{prefix}}
"""


def use_rabbitmq(config: Path, prefix: str) -> None:
    """Switch a :func:`write_config` flows.yaml to the RabbitMQ transport, every queue,
    exchange and Redis key it makes named under ``prefix`` (unique per run: see drop_prefix)."""
    config.write_text(config.read_text().replace("settings:\n", RABBIT_SETTINGS.format(prefix=prefix), 1))


def drop_prefix(prefix: str, flows: tuple[str, ...] = ("relay",)) -> None:
    """Delete the queues, exchanges and Redis keys named under ``prefix`` (a bench's own run:
    never a prefix it did not make)."""
    import asyncio

    from bus.transport.rabbitmq import RabbitTransport

    async def drop() -> None:
        t = RabbitTransport(AMQP_URL, REDIS_URL, prefix=prefix, flows=list(flows))
        await t.start()
        await t.close(timeout=1)
        await t.drop()

    asyncio.run(drop())


def order(msg_id: str, sent: float | None = None, size: int = 0) -> bytes:
    """The JSON body every server gets: the same shape for tieline, the bare app and Node-RED.

    ``size`` > 0: the order also carries the call's transcript, utterances of ~90 bytes, until
    the body is at least ``size`` bytes (a larger message, as a live transcript makes)."""
    data = {"id": msg_id, "total": 12.5, "sent": time.time() if sent is None else sent,
            "customer": {"name": "Ada Lovelace", "phone": "+14155550100", "tier": "vip"},
            "items": [{"sku": "BLENDER-1", "qty": 1}, {"sku": "CUP-2", "qty": 4}]}
    body = orjson.dumps({"type": "order.created", "data": data})
    if size > len(body):
        line = {"speaker": "agent", "at": 0, "text": "I can see the order; the blender ships "
                                                    "back free of charge."}
        count = (size - len(body)) // len(orjson.dumps(line)) + 1
        data["transcript"] = [{**line, "at": i} for i in range(count)]
        body = orjson.dumps({"type": "order.created", "data": data})
    return body


class Signer:
    """Standard Webhooks signatures with the bench secret (HMAC-SHA256, base64)."""

    def __init__(self, secret: str = SECRET):
        from standardwebhooks.webhooks import Webhook

        self._wh = Webhook(secret)

    def headers(self, msg_id: str, body: bytes, ts: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if ts is None else ts
        sig = self._wh.sign(msg_id, dt.datetime.fromtimestamp(ts, tz=dt.UTC), body.decode())
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
                "content-type": "application/json"}


# ----- processes -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout(rev: str, into: Path) -> Path:
    """git revision ``rev``'s ``bus``, ``connectors`` and ``cli.py`` extracted into ``into``
    (put it first on PYTHONPATH to run that revision): an A/B within one session."""
    archive = subprocess.run(["git", "archive", rev, "bus", "connectors", "cli.py"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def spawn(cmd: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so :func:`stop` ends it and its children only)."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    """Poll ``url`` until it answers 200; return the seconds waited. Fails if the process exits."""
    start = time.perf_counter()
    deadline = start + timeout
    with httpx.Client(timeout=1.0) as c:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
            try:
                if c.get(url).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    stop(proc)  # not left running behind the failed benchmark
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group we started, SIGKILL it if it does not exit in ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def start_sink(port: int, log: Path | None = None) -> subprocess.Popen:
    cmd = [PY, "-m", "uvicorn", "common:sink_app", "--app-dir", str(BENCH), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = spawn(cmd, log=log)
    wait_http(f"http://127.0.0.1:{port}/_stats", proc)
    return proc


def start_tieline(config: Path, port: int, log: Path | None = None, *,
                  switch_interval: float | None = None,
                  env: dict[str, str] | None = None, workers: int = 0) -> subprocess.Popen:
    """``tieline run`` (``--workers N`` when given); with ``switch_interval``, the same CLI with
    the GIL switch interval changed first (an experiment knob: the SQLite writer thread waits
    for the GIL)."""
    cmd = [TIELINE, "run", str(config), "--port", str(port), "--log-level", "warning"]
    if workers:
        cmd += ["--workers", str(workers)]
    if switch_interval is not None:
        # after tune_process(), which sets the interval the bus runs with (0.001 s)
        cmd = [PY, "-c", "import sys; import bus.launch as r; tune = r.tune_process; "
               f"r.tune_process = lambda: (tune(), sys.setswitchinterval({switch_interval})); "
               "sys.argv = ['tieline', *sys.argv[1:]]; import cli; sys.exit(cli.main())",
               *cmd[1:]]
    proc = spawn(cmd, cwd=config.parent, log=log, env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc), e.g. the workers of ``tieline run --workers``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far, from /proc (Linux); its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy so far (user, nice, system, irq, softirq), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def machine_steal_seconds() -> float:
    """CPU time the hypervisor ran other guests while this VM's cores had work (/proc/stat's
    steal): a stall of the whole machine shows here, not in any process's CPU."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def pids_named(name: str) -> list[int]:
    """The pids whose command name is exactly ``name`` (e.g. ``beam.smp``, ``redis-server``)."""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def listens(pid: int, port: int) -> bool:
    """Whether ``pid`` holds a TCP socket listening on 127.0.0.1:``port`` (Linux /proc): with
    SO_REUSEPORT an answer on the port does not say which process gave it."""
    inodes = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add(f"socket:[{cols[9]}]")
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd) in inodes for fd in fds.iterdir() if fd.is_symlink())


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ----- the latency sink (ASGI, no framework: it must not be the bottleneck) ------------------
STALL_SECONDS = 10.0  # longer than the bench flow's sink timeout (5 s)


class _Sink:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # seconds, ingress send → arrival here
        self.count = 0
        self.down = False
        self.stalled = False  # hang each delivery (past the bus's 5 s timeout), as a hung sink

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path = scope["path"]
        status, out = 200, b'{"ok":true}'
        if path == "/_stats":
            out = orjson.dumps({"count": self.count, "latencies": self.latencies})
            if scope.get("query_string") == b"reset=1":
                self.latencies, self.count = [], 0
        elif path == "/_down":
            self.down = True
        elif path == "/_up":
            self.down = self.stalled = False
        elif path == "/_stall":
            self.stalled = True
        elif self.stalled:
            await asyncio.sleep(STALL_SECONDS)
            status, out = 503, b'{"error":"stalled"}'
        elif self.down:
            status, out = 503, b'{"error":"down"}'
        else:
            now = time.time()
            try:
                self.latencies.append(now - orjson.loads(body)["sent"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass
            self.count += 1
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})


sink_app = _Sink()


def sink_stats(port: int, reset: bool = False) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}/_stats" + ("?reset=1" if reset else ""), timeout=10)
    return r.json()


# ----- figures and results -------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"nproc {nproc}, {model or platform.processor()}, Python {platform.python_version()}, "
            f"load average at start {load}")


def append_results(title: str, commands: list[str], body: str) -> None:
    """Append a dated section to bench/RESULTS.md with the machine, the commands and ``body``."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmds = "\n".join(commands)
    section = (f"\n## {title} — {when}\n\nMachine: {machine()}\n\n```\n{cmds}\n```\n\n"
               f"{body.rstrip()}\n")
    if os.environ.get("TIELINE_BENCH_DRY") != "1":  # 1: print only, for A/B experiments
        with RESULTS.open("a") as f:
            f.write(section)
    print(section)


def invocation() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


# ----- tieline without delivery: ingress alone ------------------------------------------------
def serve_ingress_only(config: str, port: int, asgi: bool = False) -> None:
    """``tieline run`` minus the consumer (``Runtime.start(consume=False)``): what ingress alone
    costs — verify, parse, commit, 202 — with no delivery competing for the event loop.
    ``asgi``: webhooks through uvicorn's ASGI cycle and Starlette, as before the fast path."""
    import uvicorn
    import uvloop

    from bus.http.app import build_app
    from bus.logs import configure
    from bus.runtime import Runtime

    async def main() -> None:
        runtime = Runtime.from_file(config)
        await runtime.start(consume=False)
        app = build_app(runtime)  # served as Runtime.serve serves it
        try:
            from bus.http.fast_hooks import hook_protocol
        except ImportError:  # a revision from before the fast path (ingress.py --against)
            asgi_only = True
        else:
            asgi_only = asgi
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               http="auto" if asgi_only else hook_protocol(runtime, app),
                                               log_level="warning", lifespan="off",
                                               access_log=False))
        try:
            await server.serve()
        finally:
            await runtime.stop()

    configure("warning")
    tune_process()
    uvloop.run(main())


def tune_process() -> None:
    """The interpreter settings `tieline run` uses, here or in a revision before bus/launch.py
    (``--against``)."""
    try:
        from bus.launch import tune_process as tune
    except ImportError:
        from bus.runtime import tune_process as tune  # type: ignore[attr-defined,no-redef]
    tune()


if __name__ == "__main__":  # python bench/common.py ingress-only CONFIG PORT [asgi]
    if sys.argv[1:2] == ["ingress-only"]:
        serve_ingress_only(sys.argv[2], int(sys.argv[3]), sys.argv[4:5] == ["asgi"])
