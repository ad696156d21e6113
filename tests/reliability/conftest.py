"""Fault runs: real `tieline` processes on loopback, a fake sink in the test, helpers to start,
kill and restart them. Every process is started in its own session and stopped by its pid."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.testing.server import free_port
from tests.conftest import SECRET
from tests.e2e.test_delivery import MAPPING

ROOT = Path(__file__).resolve().parents[2]

# A generous policy: enough attempts to ride out an outage of the sink, short enough delays
# that a run ends quickly once it is back.
RETRY = "{attempts: 40, initial_delay: 100ms, multiplier: 2, max_delay: 2s, jitter: none}"


def flows_yaml(sink_url: str, *, retry: str = RETRY, settings: str = "", concurrency: int = 16) -> str:
    """One webhook (Standard Webhooks) → map → POST {sink}/orders flow, with ``settings`` lines added."""
    return f"""
version: 1
settings:
  data_dir: ./data
  sync: full
  outbound: {{allow: [127.0.0.1]}}  # the sink is on loopback (the SSRF guard refuses it otherwise)
{settings}
connectors:
  vendor:
    type: webhook
    settings: {{verify: standard, secret: "{SECRET}", event_field: type, events: [order.created]}}
  sink:
    type: http
    settings: {{base_url: "{sink_url}", timeout: 5}}
flows:
  relay:
    from: {{connector: vendor, event: order.created}}
    concurrency: {concurrency}
    retry: {retry}
    steps:
      - map: order_to_sink
      - to: sink.request
        map:
          fields:
            method: {{const: POST}}
            path: {{const: /orders}}
            json: body
"""


def write_config(where: Path, text: str) -> Path:
    (where / "mappings").mkdir(parents=True, exist_ok=True)
    (where / "mappings" / "order_to_sink.yaml").write_text(MAPPING)
    config = where / "flows.yaml"
    config.write_text(text)
    return config


class Procs:
    """`tieline` child processes of one test; each is stopped by pid at teardown."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.live: list[subprocess.Popen] = []
        self.started = 0

    def start(self, role: str, config: Path, port: int | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen:
        """``python cli.py ROLE CONFIG [--port P] [EXTRA…]`` in the config's directory; stderr to a log file."""
        self.started += 1
        log = (self.logs / f"{self.started:02d}-{role}.log").open("wb")
        cmd = [sys.executable, str(ROOT / "cli.py"), role, str(config), "--log-level", "warning"]
        if port is not None:
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
        cmd += extra
        proc = subprocess.Popen(cmd, cwd=config.parent, stdout=log, stderr=log,
                                start_new_session=True)
        log.close()
        proc.log = self.logs / f"{self.started:02d}-{role}.log"  # type: ignore[attr-defined]
        self.live.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL: no shutdown, no goodbye to the broker."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.live.remove(proc)

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc, timeout=10)


def tail(proc: subprocess.Popen) -> str:
    path: Path = proc.log  # type: ignore[attr-defined]
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until GET /healthz answers 200; fails with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{tail(proc)}")
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"server did not answer /healthz within {timeout} s:\n{tail(proc)}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Procs(logs)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def port() -> int:
    return free_port()
