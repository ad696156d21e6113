"""`tieline worker FILE` (minus consuming the ``sink`` flow, as bench/distributed.py's WORKER),
timing each stage of a RabbitMQ delivery: where a message's time goes.

Wraps the transport's stage coroutines with wall-clock timers and, on SIGTERM, prints one line
per stage (count, mean ms) to stdout before the worker stops. Used by
``bench/distributed.py --stage-times``; the timers cost some CPU, so its msg/s are not the
figures to compare.
"""

from __future__ import annotations

import atexit
import collections
import functools
import sys
import time

from bus.transport import rabbitmq, rabbitmq_ledger, rabbitmq_publisher
from bus.transport.rabbitmq import RabbitTransport
from bus.transport.redis_batch import RedisBatch

STAGES: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
COUNTS: dict[str, list[int]] = collections.defaultdict(list)


def timed(owner: object, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            stage = STAGES[label]
            stage[0] += 1
            stage[1] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def redis_pipelines() -> None:
    """Per Redis pipeline: how long its commands waited to be written (queued behind the one in
    flight), how long it took from write to last reply, and how many commands it carried."""
    queued_at: dict[int, float] = {}
    call, send = RedisBatch.call, RedisBatch._send

    def timed_call(self, *args):
        fut = call(self, *args)
        queued_at[id(fut)] = time.perf_counter()
        return fut

    async def timed_send(self, batch):
        start = time.perf_counter()
        for _, fut in batch:
            at = queued_at.pop(id(fut), None)
            if at is not None:
                waited = STAGES["redis: queued before write"]
                waited[0] += 1
                waited[1] += start - at
        try:
            return await send(self, batch)
        finally:
            trip = STAGES["redis: write to last reply"]
            trip[0] += 1
            trip[1] += time.perf_counter() - start
            COUNTS["redis: commands per pipeline"].append(len(batch))

    RedisBatch.call, RedisBatch._send = timed_call, timed_send


def report() -> None:
    for label, (count, seconds) in STAGES.items():
        print(f"stage {label:28} n={int(count):7} mean {seconds / max(count, 1) * 1000:7.3f} ms",
              flush=True)
    for label, values in COUNTS.items():
        print(f"stage {label:28} n={len(values):7} mean {sum(values) / max(len(values), 1):7.1f}",
              flush=True)


timed(rabbitmq_ledger.RedisLedger, "peek", "read record (admit)")
timed(rabbitmq_ledger.RedisLedger, "update", "record ending")
timed(rabbitmq_publisher.Publisher, "send", "publish + confirm")
timed(RabbitTransport, "ack", "ack")
timed(rabbitmq, "deliver", "whole delivery")  # the name rabbitmq.py calls it by
redis_pipelines()
consume = RabbitTransport.consume
RabbitTransport.consume = lambda s, f, h, **k: None if f == "sink" else consume(s, f, h, **k)
atexit.register(report)

import cli  # noqa: E402 - after the wrappers are in place

sys.exit(cli.main(["worker", sys.argv[1], "--log-level", "warning"]))
