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

STAGES: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])


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


def report() -> None:
    for label, (count, seconds) in STAGES.items():
        print(f"stage {label:24} n={int(count):7} mean {seconds / max(count, 1) * 1000:7.3f} ms",
              flush=True)


timed(rabbitmq_ledger.RedisLedger, "peek", "read record (admit)")
timed(rabbitmq_ledger.RedisLedger, "update", "record ending")
timed(rabbitmq_publisher.Publisher, "send", "publish + confirm")
timed(RabbitTransport, "ack", "ack")
timed(rabbitmq, "deliver", "whole delivery")  # the name rabbitmq.py calls it by
consume = RabbitTransport.consume
RabbitTransport.consume = lambda s, f, h, **k: None if f == "sink" else consume(s, f, h, **k)
atexit.register(report)

import cli  # noqa: E402 - after the wrappers are in place

sys.exit(cli.main(["worker", sys.argv[1], "--log-level", "warning"]))
