"""Send a known set of messages, then account for every one of them.

    load = Load(url, ids("kill", 5000))
    await load.run()                                   # 16 senders, retrying with the same id
    tally = await account("embedded-kill", url, sink_state, load)
    tally.report()                                     # prints + bench/fault-results/<run>.md
    assert tally.lost == 0 and tally.duplicates == 0

Every message carries a unique webhook-id, which is also its order id in the payload, so the
sink's deliveries (``{"order": id}``) are matched back to what was sent. A message is
*acknowledged* when the bus answered 202 (or 200 naming it a duplicate of one it holds).
Every acknowledged message must end delivered, dead (with a reason) or still scheduled;
``lost`` is what is left. ``duplicates`` are deliveries beyond one per id — the sink honours
Idempotency-Key, so a repeat the bus marks with the same key is not one (``idempotent_repeats``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from connectors.testing.sink import SinkState
from tests.e2e.test_delivery import signed

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "fault-results"
RETRYABLE = {503}  # the bus asks the sender to come back; anything else is final


def ids(run: str, n: int) -> list[str]:
    """``n`` unique message ids for ``run`` (unique across runs too: the time is in them)."""
    stamp = f"{time.time_ns():x}"
    return [f"{run}-{stamp}-{i:05d}" for i in range(n)]


def payload(order: str) -> dict:
    return {"type": "order.created", "data": {"id": order, "phone": "+14155550100", "total": 1}}


@dataclass
class Load:
    """``concurrency`` senders posting signed webhooks; a message is retried (same webhook-id)
    on connection errors, timeouts and 503 until it is acknowledged or ``give_up`` seconds pass."""

    url: str
    order_ids: list[str]
    concurrency: int = 16
    give_up: float = 40.0
    pause: float = 0.1  # seconds between tries of one message
    path: str = "/hooks/vendor"
    acked: dict[str, str] = field(default_factory=dict)  # order id -> bus message id
    attempted: set[str] = field(default_factory=set)
    abandoned: set[str] = field(default_factory=set)  # retried for give_up seconds, never acked
    rejected: dict[str, int] = field(default_factory=dict)  # answered a final non-2xx status
    answers: Counter[str] = field(default_factory=Counter)  # "202", "503", "ConnectError", ...
    on_ack: Callable[[int], None] | None = None  # called with len(acked) after each ack

    async def run(self) -> None:
        todo = iter(self.order_ids)  # shared by the senders: one event loop, no lock needed
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=5, limits=limits) as client:
            await asyncio.gather(*(self._sender(client, todo) for _ in range(self.concurrency)))

    async def _sender(self, client: httpx.AsyncClient, todo: Iterable[str]) -> None:
        for order in todo:
            await self._send(client, order)

    async def _send(self, client: httpx.AsyncClient, order: str) -> None:
        body, headers = signed(payload(order), msg_id=order)
        self.attempted.add(order)
        deadline = time.monotonic() + self.give_up
        while time.monotonic() < deadline:
            try:
                r = await client.post(self.path, content=body, headers=headers)
            except httpx.TransportError as exc:  # refused, reset, timed out: maybe stored, retry
                self.answers[type(exc).__name__] += 1
                await asyncio.sleep(self.pause)
                continue
            self.answers[str(r.status_code)] += 1
            if r.status_code in (200, 202):
                data = r.json()
                mids = data["accepted"] or data["events"][0]["duplicate_of"]
                self.acked[order] = mids[0]
                if self.on_ack:
                    self.on_ack(len(self.acked))
                return
            if r.status_code not in RETRYABLE:
                self.rejected[order] = r.status_code
                return
            await asyncio.sleep(self.pause)
        self.abandoned.add(order)


@dataclass
class Tally:
    """The accounting of one run; ``report()`` prints it and writes bench/fault-results/<run>.md."""

    run: str
    sent: int
    acknowledged: int
    delivered: int
    dead: int
    scheduled: int
    lost: int
    duplicates: int
    idempotent_repeats: int = 0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    lost_sample: list[str] = field(default_factory=list)  # "order id (bus state)"
    answers: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    COLUMNS = ("sent", "acknowledged", "delivered", "dead", "scheduled", "lost", "duplicates")

    def table(self) -> str:
        head = "| run | " + " | ".join(self.COLUMNS) + " |"
        rule = "|" + " --- |" * (len(self.COLUMNS) + 1)
        row = f"| {self.run} | " + " | ".join(str(getattr(self, c)) for c in self.COLUMNS) + " |"
        return "\n".join([head, rule, row])

    def text(self) -> str:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"## fault run {self.run} — {when}", "",
                 f"Machine: nproc {os.cpu_count()}; run time {self.seconds:.1f} s", "",
                 self.table(), "",
                 f"- ingress answers: {dict(sorted(self.answers.items()))}",
                 f"- repeats the sink absorbed by Idempotency-Key: {self.idempotent_repeats}"]
        if self.dead_reasons:
            lines.append(f"- dead-letter reasons: {dict(self.dead_reasons.most_common(5))}")
        if self.lost_sample:
            lines.append(f"- lost (first {len(self.lost_sample)}): {', '.join(self.lost_sample)}")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def report(self) -> Path:
        text = self.text()
        print("\n" + text)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.run}.md"
        path.write_text(text)
        return path


def deliveries(sink: SinkState) -> Counter[str]:
    """Order id -> how many times the sink took it (idempotent repeats excluded)."""
    return Counter(r.json["order"] for r in sink.delivered if isinstance(r.json, dict) and "order" in r.json)


async def _state(client: httpx.AsyncClient, mid: str) -> tuple[str, str | None]:
    """The bus's state of message ``mid`` ('missing' when unknown) and its dead-letter reason."""
    r = await client.get(f"/api/v1/messages/{mid}")
    if r.status_code == 404:
        return "missing", None
    r.raise_for_status()
    state = r.json()["message"]["state"]
    if state != "dead":
        return state, None
    dl = await client.get(f"/api/v1/dlq/{mid}")
    return state, (dl.json().get("error") if dl.status_code == 200 else "not in /api/v1/dlq")


async def _states(client: httpx.AsyncClient, acked: dict[str, str], orders: Iterable[str]
                  ) -> dict[str, tuple[str, str | None]]:
    orders = list(orders)
    slots = asyncio.Semaphore(16)  # thousands at once would only queue in the client's pool

    async def one(order: str) -> tuple[str, str | None]:
        async with slots:
            return await _state(client, acked[order])

    found = await asyncio.gather(*(one(o) for o in orders))
    return dict(zip(orders, found, strict=True))


async def account(run: str, api: str, sink: SinkState, load: Load, *, settle: float = 30.0,
                  started: float | None = None, notes: Iterable[str] = ()) -> Tally:
    """Wait (at most ``settle`` s) until every acknowledged message is delivered or dead, then count.

    ``api``: a running bus's base URL (its /api/v1 answers for the transport it uses).
    """
    deadline = time.monotonic() + settle
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        while True:
            pending = set(load.acked) - set(deliveries(sink))
            if not pending or time.monotonic() > deadline:
                break
            if len(pending) <= 200:  # cheap enough to ask: done when all that is left is dead
                states = await _states(client, load.acked, pending)
                if all(s == "dead" for s, _ in states.values()):
                    break
            await asyncio.sleep(0.5)
        delivered = deliveries(sink)
        pending = set(load.acked) - set(delivered)
        states = await _states(client, load.acked, sorted(pending))
    dead = {o: why for o, (s, why) in states.items() if s == "dead"}
    scheduled = {o for o, (s, _) in states.items() if s == "queued"}
    lost = sorted(pending - set(dead) - scheduled)
    return Tally(
        run=run,
        sent=len(load.attempted),
        acknowledged=len(load.acked),
        delivered=len(set(delivered) & load.attempted),
        dead=len(dead),
        scheduled=len(scheduled),
        lost=len(lost),
        duplicates=sum(n - 1 for n in delivered.values()),
        idempotent_repeats=sink.duplicates,
        dead_reasons=Counter((why or "?")[:120] for why in dead.values()),
        lost_sample=[f"{o} ({states[o][0]}, message {load.acked[o]})" for o in lost[:10]],
        answers=load.answers,
        notes=[*notes, *([f"abandoned by senders (never acknowledged): {len(load.abandoned)}"]
                         if load.abandoned else []),
               *([f"final refusals: {Counter(load.rejected.values())}"] if load.rejected else [])],
        seconds=time.monotonic() - started if started is not None else 0.0,
    )
