"""Starting a bus process: ``tieline run`` / ``serve`` / ``worker`` from a flows file.

Builds the Runtime, adds the worker supervisor when ``run`` has workers, tunes the interpreter
for a long-running process and runs the event loop (uvloop when installed) until a signal.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bus.errors import TielineError
from bus.runtime import Runtime


def tune_process() -> None:
    """Interpreter settings for a long-running bus process (measured: bench/RESULTS.md)."""
    import gc
    import sys

    # The SQLite writer thread and the event loop share the GIL; a shorter switch interval
    # lets a finished commit wake its waiting requests sooner.
    sys.setswitchinterval(0.001)
    # Each message in flight holds ~75 GC-tracked objects while it waits for its commit, so the
    # default thresholds (700) run a young collection every few requests and full collections
    # of 80-120 ms that set the ingress p99. Collect less often instead; reference counting
    # still frees almost everything at once, only cycles wait longer.
    gc.set_threshold(10_000, 10, 10)


def run(
    path: str | Path, host: str | None = None, port: int | None = None, *,
    role: str = "run", watch: bool = False, tls_files: tuple[str, str] | None = None,
    workers: int | None = None, log_level: str = "info",
) -> None:
    """Load, start and serve (or work) until a signal stops it (uvloop when installed).

    ``run`` with workers (``settings.workers`` or ``workers``): this process serves HTTP and
    supervises that many ``worker`` processes running the flows; ``serve`` and ``worker``
    alone are the same split, started by hand (or on several machines, with a broker).
    """
    if role != "run" and workers:
        raise TielineError(f"--workers is for 'tieline run'; 'tieline {role}' is one process")
    # serve and worker share the embedded file; run shares it when it has workers (from_file)
    runtime = Runtime.from_file(path, workers=workers, **({"shared": True} if role != "run" else {}))
    count = runtime.config.settings.workers if role == "run" else 0
    if count:
        from bus.supervisor import Supervisor, worker_argv

        release = getattr(runtime.transport, "release", None)  # embedded: free a dead worker's leases
        runtime.supervisor = supervisor = Supervisor(
            worker_argv(str(path), log_level=log_level), count, on_exit=release
        )
        # A reload (API, SIGHUP, --watch) of the server reaches every worker: they reload the
        # same files on their SIGHUP.
        runtime.on_apply.append(lambda: supervisor.forward(signal.SIGHUP))
    tune_process()
    if role == "worker":
        main = runtime.work(watch=watch, config_path=Path(path))
    else:
        main = runtime.serve(host, port, consume=role == "run" and not count, watch=watch,
                             config_path=Path(path), tls_files=tls_files)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        asyncio.run(main)
    else:
        uvloop.run(main)
