"""Start-up time: from spawning ``tieline run`` on the shipped flows.yaml to /healthz answering 200.

Each run uses a fresh data directory (TIELINE_DATA_DIR) and a free port (TIELINE_PORT), so it
measures a cold database; the interpreter's own files are warm in the page cache after run 1.
Also times ``python -c 'import bus.runtime'`` alone, to split import from wiring.

Run: .venv/bin/python bench/startup.py [-n 5]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import common as c


def one(tmp: Path) -> float:
    port = c.free_port()
    env = {"TIELINE_DATA_DIR": str(tmp / "data"), "TIELINE_PORT": str(port),
           "TIELINE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    start = time.perf_counter()
    proc = c.spawn([c.TIELINE, "run", str(c.ROOT / "flows.yaml"), "--port", str(port),
                    "--log-level", "warning"], env=env, log=tmp / "tieline.log")
    try:
        c.wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
        return time.perf_counter() - start
    finally:
        c.stop(proc)


def import_time() -> float:
    start = time.perf_counter()
    subprocess.run([c.PY, "-c", "import bus.runtime, bus.http.app, connectors.registry"],
                   cwd=c.ROOT, check=True, timeout=60)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    times, imports = [], []
    for i in range(args.n):
        with tempfile.TemporaryDirectory(prefix="tieline-start-") as d:
            times.append(one(Path(d)))
        imports.append(import_time())
        print(f"run {i + 1}: healthz after {times[-1]:.2f} s (imports alone {imports[-1]:.2f} s)")
    body = (f"Shipped flows.yaml (sandbox on), fresh data dir per run, {args.n} runs.\n\n"
            f"- spawn → /healthz 200: median {c.median(times):.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)})\n"
            f"- of which `import bus.runtime, bus.http.app, connectors.registry` alone: median "
            f"{c.median(imports):.2f} s (runs: {', '.join(f'{t:.2f}' for t in imports)})")
    c.append_results("Start-up: spawn → /healthz 200", [c.invocation()], body)


if __name__ == "__main__":
    main()
