"""Fault run on the RabbitMQ transport: `tieline serve` + 2 `tieline worker`, the broker stopped
and started under load, a worker SIGKILLed and restarted: every 202 is delivered exactly once.

Needs the machine's RabbitMQ and Redis (TIELINE_TEST_AMQP_URL / TIELINE_TEST_REDIS_URL) and
`rabbitmqctl`; a missing broker fails the run, it is never skipped.
TIELINE_FAULT_RABBIT_MESSAGES sets the load (2000), TIELINE_FAULT_BROKER_DOWN the outage (6 s).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aio_pika
import pytest

from bus.envelope import new_id
from bus.transport.rabbitmq import RabbitTransport

from .accounting import Load, account, ids
from .conftest import Procs, flows_yaml, wait_healthy, write_config
from .test_embedded_faults import until

AMQP_URL = os.environ.get("TIELINE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("TIELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGES = int(os.environ.get("TIELINE_FAULT_RABBIT_MESSAGES", "2000"))
BROKER_DOWN = float(os.environ.get("TIELINE_FAULT_BROKER_DOWN", "6"))  # > publish_timeout: 503s too


async def ctl(*args: str, timeout: float = 60.0) -> None:
    """``rabbitmqctl ARGS``; fails with its output when it does not succeed."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"rabbitmqctl {' '.join(args)} did not finish in {timeout} s") from None
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {out.decode()[-500:]}"


async def broker_answers(timeout: float) -> None:
    """Until an AMQP connection opens; fail (never skip) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = await aio_pika.connect(AMQP_URL, timeout=2)
            await connection.close()
            return
        except Exception as exc:  # noqa: BLE001 — any failure to connect means 'not yet'
            if time.monotonic() > deadline:
                pytest.fail(f"RabbitMQ at {AMQP_URL} does not answer ({exc!r}); start it "
                            "(service rabbitmq-server start) or set TIELINE_TEST_AMQP_URL")
            await asyncio.sleep(0.2)


async def restore_broker() -> None:
    """start_app (a no-op when it runs) and wait until it answers: leave the broker as found."""
    await ctl("start_app")
    await ctl("await_startup")
    await broker_answers(30)


async def drop_prefix(prefix: str) -> None:
    """Delete every queue, exchange and Redis key the run's prefix created."""
    transport = RabbitTransport(AMQP_URL, REDIS_URL, prefix=prefix, flows=["relay"])
    await transport.start()
    await transport.close(timeout=1)
    await transport.drop()


def rabbit_config(tmp_path: Path, sink_url: str, prefix: str) -> Path:
    """The fault runs' flows.yaml on the RabbitMQ transport, its names under ``prefix``."""
    settings = (f"  transport: rabbitmq\n  amqp_url: \"{AMQP_URL}\"\n"
                f"  redis_url: \"{REDIS_URL}\"\n  broker_prefix: \"{prefix}\"")
    return write_config(tmp_path, flows_yaml(sink_url, settings=settings))


async def test_broker_restart_and_worker_kill_under_load(tmp_path: Path, sink, procs: Procs,
                                                         port: int) -> None:
    """serve + 2 workers; broker stop/start and a worker SIGKILL under load: each 202 delivered once."""
    await broker_answers(5)
    started = time.monotonic()
    state, sink_url = sink
    prefix = f"fault-{new_id().lower()}"
    config = rabbit_config(tmp_path, sink_url, prefix)
    url = f"http://127.0.0.1:{port}"
    notes: list[str] = []
    try:
        server = procs.start("serve", config, port)
        workers = [procs.start("worker", config) for _ in range(2)]
        await wait_healthy(url, server)
        load = Load(url, ids("rabbit", MESSAGES), give_up=60)
        sending = asyncio.create_task(load.run())
        try:
            await until(lambda: len(load.acked) >= MESSAGES // 4 or sending.done(), 60, "25% acks")
            notes.append(f"worker SIGKILL at {len(load.acked)} acknowledged, "
                         f"{len(state.delivered)} delivered; restarted")
            procs.kill(workers[0])
            workers[0] = procs.start("worker", config)
            await until(lambda: len(load.acked) >= MESSAGES // 2 or sending.done(), 60, "50% acks")
            notes.append(f"broker stop_app at {len(load.acked)} acknowledged, "
                         f"{len(state.delivered)} delivered; start_app after {BROKER_DOWN:g} s")
            try:
                await ctl("stop_app")
                await asyncio.sleep(BROKER_DOWN)
            finally:
                await restore_broker()
            notes.append(f"broker back at {len(load.acked)} acknowledged")
            await asyncio.wait_for(sending, 180)
        finally:
            sending.cancel()
        for w in workers:  # a worker that died on the outage would leave messages scheduled
            assert w.poll() is None, f"a worker exited with {w.returncode}"
        retries = sum(tail_count(p, "publish_retry") for p in procs.logs.glob("*-serve.log"))
        notes.append(f"publishes the server retried through the outage: {retries}")
        tally = await account("rabbitmq-broker-restart-worker-kill", url, state, load, settle=60,
                              started=started, notes=notes)
    finally:
        procs.stop_all()
        await restore_broker()
        await drop_prefix(prefix)
    tally.report()
    assert tally.lost == 0, tally.text()
    assert tally.duplicates == 0, tally.text()
    assert tally.delivered >= tally.acknowledged > 0, tally.text()


def tail_count(log: Path, word: str) -> int:
    """How many lines of a process log mention ``word``."""
    return sum(word in line for line in log.read_text(errors="replace").splitlines())
