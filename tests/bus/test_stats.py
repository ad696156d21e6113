"""Rolling dashboard statistics: windows, success rate, percentiles, throughput."""

from bus.stats import Stats


def test_windows_split_recent_from_older_minutes():
    """The 5-minute window only counts the last five minutes; the hour counts everything."""
    now = [10_000 * 60.0]
    stats = Stats(clock=lambda: now[0])
    for _ in range(3):
        stats.finished("f", "delivered", 0.010)
    now[0] += 10 * 60  # ten minutes later
    stats.finished("f", "dead", 0.5)
    snap = stats.snapshot()
    five, hour = snap["windows"]["5m"]["flows"]["f"], snap["windows"]["60m"]["flows"]["f"]
    assert (five["ok"], five["failed"], five["success_rate"]) == (0, 1, 0.0)
    assert (hour["ok"], hour["failed"], hour["success_rate"]) == (3, 1, 0.75)
    assert hour["per_second"] == round(4 / 3600, 4)


def test_percentiles_follow_the_distribution():
    """p50 sits with the bulk, p99 with the tail, each within one bucket (25%)."""
    stats = Stats(clock=lambda: 0.0)
    for _ in range(98):
        stats.connector_call("sink", "post", "ok", 0.020)
    for _ in range(2):
        stats.connector_call("sink", "post", "retryable", 2.0)
    s = stats.snapshot()["windows"]["5m"]["connectors"]["sink"]
    assert 20 <= s["p50_ms"] <= 25
    assert 2000 <= s["p99_ms"] <= 2500
    assert s["success_rate"] == 0.98


def test_retries_are_counted_but_not_as_outcomes():
    """A retried attempt is shown as a retry, not as a success or a failure."""
    stats = Stats(clock=lambda: 0.0)
    stats.finished("f", "retried", 0.1)
    stats.finished("f", "delivered", 0.3)
    s = stats.snapshot()["windows"]["5m"]["flows"]["f"]
    assert (s["count"], s["ok"], s["retried"], s["success_rate"]) == (1, 1, 1, 1.0)


def test_recent_failures_newest_first():
    """Failures are listed newest first with their error."""
    t = [0.0]
    stats = Stats(clock=lambda: t[0])
    stats.failed("f", "steps[1] to: a.b", "m1", "HTTP 503", True)
    t[0] = 1.0
    stats.failed("f", "steps[1] to: a.b", "m2", "HTTP 400", False)
    assert [f["message_id"] for f in stats.snapshot()["recent_failures"]] == ["m2", "m1"]
