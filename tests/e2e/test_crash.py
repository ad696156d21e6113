"""SIGKILL the server under load, restart it: every message answered 202 is delivered."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.test_delivery import MAPPING, flows, signed

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "run", str(config), "--port", str(port),
         "--log-level", "warning", *extra],
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if (await c.get(url + "/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server did not become healthy")


async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path, sink):
    """Messages acknowledged with 202 before a SIGKILL are all delivered after the restart."""
    state, sink_url = sink
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING)
    config = tmp_path / "flows.yaml"
    config.write_text(flows(sink_url))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(config, port)
    acked: set[str] = set()
    try:
        await wait_healthy(url, proc)
        stop = asyncio.Event()

        async def sender(worker: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=5) as c:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    order = f"o-{worker}-{i}"
                    body, headers = signed(
                        {"type": "order.created", "data": {"id": order, "phone": "+14155550100"}},
                        msg_id=order,
                    )
                    try:
                        r = await c.post("/hooks/vendor", content=body, headers=headers)
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 202:
                        acked.add(order)

        senders = [asyncio.create_task(sender(w)) for w in range(16)]
        while len(acked) < 300:
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        await asyncio.gather(*senders)

        proc = start_server(config, port)
        await wait_healthy(url, proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            delivered = {r.json["order"] for r in state.delivered}
            if acked <= delivered:
                break
            await asyncio.sleep(0.1)
        delivered = {r.json["order"] for r in state.delivered}
        assert acked - delivered == set(), f"{len(acked - delivered)} acknowledged messages lost"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
