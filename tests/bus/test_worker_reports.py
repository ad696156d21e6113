"""Worker reports: a worker's metrics and statistics, added up by the processes serving HTTP."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bus.envelope import new_id
from bus.metrics import Metrics
from bus.stats import Stats
from bus.worker_reports import STALE_AFTER, FileReports, RedisReports, _Merged, report

REDIS_URL = os.environ.get("TIELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class _Runtime:  # what report() reads of a runtime
    def __init__(self) -> None:
        self.metrics, self.stats = Metrics(), Stats()


def _observe(rt: _Runtime, flow: str, delivered: int, latency: float) -> None:
    for _ in range(delivered):
        rt.metrics.started(flow)
        rt.metrics.finished(flow, "delivered", latency)
        rt.stats.finished(flow, "delivered", latency)


def test_merged_stats_equal_the_stats_of_all_observations() -> None:
    """Two processes' dumps add up to what one process seeing everything would report."""
    now = time.time()
    a, b, both = Stats(lambda: now), Stats(lambda: now), Stats(lambda: now)
    for stats, flow, latency, n in ((a, "orders", 0.010, 30), (b, "orders", 0.200, 10),
                                    (b, "returns", 0.050, 5)):
        for _ in range(n):
            stats.finished(flow, "delivered", latency)
            both.finished(flow, "delivered", latency)
    b.failed("returns", "steps[0]", "m1", "boom", retrying=False)
    both.failed("returns", "steps[0]", "m1", "boom", retrying=False)
    dumps = [orjson.loads(orjson.dumps(s.dump())) for s in (a, b)]  # as read back from a report
    merged = Stats.merged(dumps, clock=lambda: now).snapshot()
    assert merged == both.snapshot()
    assert merged["windows"]["5m"]["flows"]["orders"]["count"] == 40
    assert merged["windows"]["5m"]["flows"]["orders"]["p99_ms"] > 100  # b's slow ones count


def test_metrics_of_workers_join_the_servers_families_with_a_worker_label() -> None:
    """One HELP/TYPE per family; each worker's samples labelled with its name; the text parses."""
    server, w1, w2 = _Runtime(), _Runtime(), _Runtime()
    _observe(w1, "orders", 3, 0.01)
    _observe(w2, "orders", 4, 0.01)
    reports = [orjson.loads(report(w, name)) for w, name in ((w1, "w1"), (w2, "w2"))]
    from prometheus_client import generate_latest

    text = generate_latest(_Merged(server.metrics.registry.collect(), reports)).decode()
    assert text.count("# TYPE tieline_flow_outcomes_total counter") == 1
    delivered = {
        s.labels.get("worker"): s.value
        for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "tieline_flow_outcomes_total" and s.labels["outcome"] == "delivered"
    }
    assert delivered == {"w1": 3.0, "w2": 4.0}
    buckets = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "tieline_flow_latency_seconds_count" and s.labels.get("worker") == "w2"]
    assert [s.value for s in buckets] == [4.0]


async def test_file_reports_replace_each_other_and_go_stale(tmp_path: Path) -> None:
    now = [time.time()]
    store = FileReports(tmp_path / "workers", clock=lambda: now[0])
    assert await store.all() == []  # no directory yet: no workers
    await store.put("w/1", b'{"n": 1}')  # a name with a slash stays one file
    await store.put("w/1", b'{"n": 2}')
    await store.put("w2", b'{"n": 3}')
    assert sorted(await store.all()) == [b'{"n": 2}', b'{"n": 3}']
    now[0] += STALE_AFTER + 1
    assert await store.all() == []


async def test_redis_reports_expire() -> None:
    redis = Redis.from_url(REDIS_URL)
    prefix = f"test-reports-{new_id().lower()}"
    try:
        store = RedisReports(redis, prefix)
        await store.put("w1", b"one")
        await store.put("w2", b"two")
        assert sorted(await store.all()) == [b"one", b"two"]
        ttl = await redis.pttl(f"{prefix}:workers:w1")
        assert 0 < ttl <= STALE_AFTER * 1000
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
