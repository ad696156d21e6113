"""Fault runs on the embedded transport (`tieline run`): SIGKILL under load, a sink outage.

Sizes are environment-tunable for longer soak runs: TIELINE_FAULT_MESSAGES (run 1, 5000),
TIELINE_FAULT_OUTAGE_MESSAGES (run 2, 1000), TIELINE_FAULT_SINK_DOWN (run 2, seconds, 20).
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.testing.server import serve_app
from connectors.testing.sink import SinkState, make_sink_app
from tests.e2e.test_delivery import MAPPING

from .accounting import Load, account, ids
from .conftest import Procs, flows_yaml, wait_healthy, write_config

MESSAGES = int(os.environ.get("TIELINE_FAULT_MESSAGES", "5000"))
OUTAGE_MESSAGES = int(os.environ.get("TIELINE_FAULT_OUTAGE_MESSAGES", "1000"))
SINK_DOWN = float(os.environ.get("TIELINE_FAULT_SINK_DOWN", "20"))
KILLS = 3


async def until(check, timeout: float, what) -> None:
    """Poll ``check()`` every 10 ms; fail naming ``what`` (or ``what()``) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what() if callable(what) else what}")
        await asyncio.sleep(0.01)


async def test_sigkill_three_times_under_load(tmp_path: Path, sink, procs: Procs, port: int) -> None:
    """`tieline run` SIGKILLed 3 times during 5,000 webhooks: every acknowledged one is accounted for, none twice."""
    started = time.monotonic()
    state, sink_url = sink
    config = write_config(tmp_path, flows_yaml(sink_url))
    url = f"http://127.0.0.1:{port}"
    proc = procs.start("run", config, port)
    await wait_healthy(url, proc)
    load = Load(url, ids("kill", MESSAGES))
    sending = asyncio.create_task(load.run())
    notes = []
    try:
        for k in range(1, KILLS + 1):
            mark = MESSAGES * k // (KILLS + 1)
            await until(lambda m=mark: len(load.acked) >= m or sending.done(), 60, f"{mark} acks")
            notes.append(f"SIGKILL {k} at {len(load.acked)} acknowledged, "
                         f"{len(state.delivered)} delivered")
            procs.kill(proc)
            proc = procs.start("run", config, port)
            await wait_healthy(url, proc)
        await asyncio.wait_for(sending, 120)
    finally:
        sending.cancel()
    tally = await account("embedded-sigkill", url, state, load, settle=40, started=started,
                          notes=notes)
    tally.report()
    assert tally.lost == 0, tally.text()
    assert tally.duplicates == 0, tally.text()
    assert len(notes) == KILLS and tally.sent == MESSAGES
    assert tally.acknowledged == tally.sent, f"the senders gave up on some messages:\n{tally.text()}"


class FlakySink:
    """Wraps the sink app: after the outage, the first try of one message in ten is answered
    500 and of another one in ten 429 with Retry-After: 1 (chosen by a hash of the order id)."""

    def __init__(self, inner: ASGIApp):
        self.inner = inner
        self.tried: set[str] = set()
        self.served = {500: 0, 429: 0}

    @staticmethod
    def fault(order: str) -> int | None:
        return {0: 500, 1: 429}.get(zlib.crc32(order.encode()) % 10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        body, more = b"", True
        while more:  # read the request to see whose message it is, then hand it on unchanged
            msg = await receive()
            body, more = body + msg.get("body", b""), msg.get("more_body", False)
        order = _order(body)
        status = self.fault(order) if order and order not in self.tried else None
        if order:
            self.tried.add(order)
        if status is None:
            replayed = False

            async def again() -> dict:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.inner(scope, again, send)
        self.served[status] += 1
        headers = [(b"content-type", b"application/json")]
        if status == 429:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error": "scripted"}'})


def _order(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data.get("order") if isinstance(data, dict) else None


async def test_sink_outage_then_flaky_sink(tmp_path: Path, procs: Procs, port: int) -> None:
    """The sink down 20 s, then 10% 500s and 10% 429s: every acknowledged message is delivered exactly once."""
    started = time.monotonic()
    state = SinkState()
    state.down = True  # answers 503 to everything until the outage is over
    flaky = FlakySink(make_sink_app(state))
    async with serve_app(flaky) as sink_url:
        retry = "{attempts: 60, initial_delay: 250ms, multiplier: 2, max_delay: 3s, jitter: none}"
        config = write_config(tmp_path, flows_yaml(sink_url, retry=retry))
        url = f"http://127.0.0.1:{port}"
        proc = procs.start("run", config, port)
        await wait_healthy(url, proc)
        refused: list[int] = []  # calls the sink answered 503 while down

        def back() -> None:
            refused.append(len(state.requests))
            state.down = False

        up = asyncio.get_running_loop().call_later(SINK_DOWN, back)
        try:
            load = Load(url, ids("outage", OUTAGE_MESSAGES))
            await asyncio.wait_for(load.run(), 120)
            await until(lambda: not state.down, SINK_DOWN + 5, "the sink to come back")
        finally:
            up.cancel()
        refused_while_down = refused[0]
        tally = await account("embedded-sink-outage", url, state, load, settle=45, started=started,
                              notes=[f"sink down {SINK_DOWN:g} s; {refused_while_down} calls refused "
                                     f"with 503 meanwhile; afterwards scripted {flaky.served}"])
    tally.report()
    assert tally.lost == 0, tally.text()
    assert tally.duplicates == 0, tally.text()
    assert tally.dead == 0 and tally.delivered == tally.acknowledged == OUTAGE_MESSAGES, tally.text()
    assert refused_while_down > 0 and flaky.served[500] > 0 and flaky.served[429] > 0, flaky.served


async def test_accounting_counts_lost_and_duplicated(make_bus, sink) -> None:
    """The tally is able to fail: an acknowledged id the bus never stored is lost, a second delivery a duplicate."""
    state, sink_url = sink
    async with make_bus(flows_yaml(sink_url), {"order_to_sink": MAPPING}) as bus:
        load = Load(bus.url, ids("acct", 2), concurrency=2)
        await load.run()
        await state.wait_delivered(2)
        state.delivered.append(state.delivered[0])  # the sink took one message twice
        load.attempted.add("acct-ghost")
        load.acked["acct-ghost"] = "01NOSUCHMESSAGE0000000000"  # a 202 for nothing stored
        tally = await account("accounting-self-check", bus.url, state, load, settle=1)
    assert (tally.sent, tally.acknowledged, tally.delivered) == (3, 3, 2)
    assert (tally.lost, tally.duplicates) == (1, 1)
    assert tally.lost_sample == ["acct-ghost (missing, message 01NOSUCHMESSAGE0000000000)"]
