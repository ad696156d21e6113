"""Client-side CPU per outbound HTTP request: httpx, aiohttp and tieline's outbound client.

"tieline vendor connector path" is what the vendor connectors send: ``client.build_request``,
then ``connectors.http_calls.send`` (through ``plain_request.send_built`` when the client is plain).
"tieline plain path" is what the http connector sends through that client when the call
needs none of httpx's machinery (``bus.security.plain_request``, then ``bus.security.h1``).
"tieline outbound client" is the client connectors get, built by ``bus.runtime.outbound_client``
from a flows.yaml that allow-lists 127.0.0.1 (so the SSRF guard runs as in production). Each
client POSTs a small JSON body ``-n`` times, 16 at a time, to the latency sink on
loopback, in a child process; the figure is that process's CPU time (``time.process_time``)
per request. CPU time suffers less than wall time from a shared machine. ``--sniffio DIR``
adds a run of httpx with DIR on PYTHONPATH (a dir where sniffio is installed: httpcore 1.0.x
tries ``import sniffio`` on every lock and event when it is missing).

Run: .venv/bin/python bench/http_client_cpu.py [-n 3000] [--rounds 3] [--sniffio /tmp/sniffio_t]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

import common as c

CLIENT = """
import asyncio, sys, time
N, URL, KIND, CONFIG = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

async def run():
    if KIND.startswith("tieline"):  # as `tieline run` logs: debug lines (one per call) are filtered
        from bus.logs import configure
        configure("warning", cache=True)
    sem = asyncio.Semaphore(16)
    if KIND == "httpx":
        import httpx
        client = httpx.AsyncClient(base_url=URL)
        async def post():
            await client.post("/x", json={"sent": time.time()})
    elif KIND == "tieline":
        from bus.config.loader import load_config
        from bus.runtime import outbound_client
        from connectors.registry import ConnectorRegistry
        config = load_config(CONFIG, connector_types=ConnectorRegistry.from_entry_points().types)
        client = outbound_client(config)
        async def post():
            await client.post(URL + "/x", json={"sent": time.time()})
    elif KIND == "tieline-plain":  # what the http connector sends: plain_request, then bus.security.h1
        import orjson
        from bus.config.loader import load_config
        from bus.runtime import outbound_client
        from bus.security.plain_request import plain_request
        from connectors.registry import ConnectorRegistry
        config = load_config(CONFIG, connector_types=ConnectorRegistry.from_entry_points().types)
        client = outbound_client(config)
        async def post():
            plain = plain_request(client, "POST", URL + "/x", content=orjson.dumps({"sent": time.time()}),
                                  headers=[("content-type", "application/json")], timeout=5.0)
            await plain.send()
    elif KIND == "tieline-built":  # what vendor connectors send: build_request, connectors.http_calls.send
        from bus.config.loader import load_config
        from bus.runtime import outbound_client
        from connectors.http_calls import send
        from connectors.registry import ConnectorRegistry
        config = load_config(CONFIG, connector_types=ConnectorRegistry.from_entry_points().types)
        client = outbound_client(config)
        async def post():
            await send(client, client.build_request("POST", URL + "/x", json={"sent": time.time()}),
                       name="bench")
    else:
        import aiohttp
        client = aiohttp.ClientSession(URL)
        async def post():
            async with client.post("/x", json={"sent": time.time()}) as r:
                await r.read()
    async def one():
        async with sem:
            await post()
    await asyncio.gather(*(one() for _ in range(200)))  # warm up: connections, caches
    t = time.process_time()
    await asyncio.gather(*(one() for _ in range(N)))
    print(f"CPU_US {(time.process_time() - t) / N * 1e6:.0f}")
    await (client.close() if KIND == "aiohttp" else client.aclose())

asyncio.run(run())
"""


# The runtime's client as a deployment would build it: 127.0.0.1 allow-listed for the sink.
CONFIG = """\
version: 1
settings:
  data_dir: {data_dir}
  outbound:
    allow: ["127.0.0.1"]
flows: {{}}
"""


def one(kind: str, url: str, n: int, pythonpath: str | None, config: Path) -> float:
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    out = subprocess.run([c.PY, "-c", CLIENT, str(n), url, kind, str(config)], capture_output=True,
                         text=True, timeout=300, cwd=c.ROOT, env={**os.environ, **env}).stdout
    m = re.search(r"CPU_US (\d+)", out)
    if not m:
        raise RuntimeError(f"client {kind} printed no figure: {out!r}")
    return float(m.group(1))


NAMES = {"tieline": "tieline outbound client", "tieline-plain": "tieline plain path (http connector)",
         "tieline-built": "tieline vendor connector path (build_request + send)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sniffio", default=None, help="a dir with sniffio installed")
    args = ap.parse_args()
    variants = [("httpx", None), ("tieline", None), ("tieline-plain", None), ("tieline-built", None),
                ("aiohttp", None)]
    if args.sniffio:
        variants.insert(1, ("httpx", args.sniffio))
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tieline-client-") as d:
        config = Path(d) / "flows.yaml"
        config.write_text(CONFIG.format(data_dir=Path(d) / "data"))
        port = c.free_port()
        sink = c.start_sink(port, Path(d) / "sink.log")
        try:
            for _ in range(args.rounds):  # alternated, so drift in load hits every variant
                for kind, path in variants:
                    name = NAMES.get(kind, kind) + (" + sniffio" if path else "")
                    url = f"http://127.0.0.1:{port}"
                    runs.setdefault(name, []).append(one(kind, url, args.n, path, config))
                    print(f"{name}: {runs[name][-1]:.0f} µs CPU per request")
        finally:
            c.stop(sink)
    lines = [f"{args.n} POSTs per run, 16 concurrent, {args.rounds} rounds alternated; "
             "client CPU time per request.\n", "| client | median µs CPU/request | runs |",
             "| --- | --- | --- |"]
    for name, rs in runs.items():
        lines.append(f"| {name} | {c.median(rs):.0f} | {', '.join(f'{r:.0f}' for r in rs)} |")
    c.append_results("Outbound HTTP client CPU: httpx vs tieline's client vs aiohttp", [c.invocation()], "\n".join(lines))


if __name__ == "__main__":
    main()
