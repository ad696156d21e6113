"""Sagas end to end: a later step failing for good undoes the completed steps in reverse."""

from __future__ import annotations

from bus.transport.base import MessageState


def saga_flows(sink_url: str) -> str:
    def call(path: str, extra: str = "") -> str:
        return (f"      - to: sink.request\n"
                f"        map: {{fields: {{method: {{const: POST}}, path: {{const: {path}}}, "
                f"json: body}}}}\n{extra}")

    undo = ("        as: {name}\n"
            "        compensate:\n"
            "          action: sink.request\n"
            "          map: {{fields: {{method: {{const: POST}}, path: {{const: {path}}}, "
            "json.n: context.{name}.n, json.order: body.order}}}}\n")
    return f"""
version: 1
settings: {{data_dir: ./data, outbound: {{allow: [127.0.0.1]}}}}
connectors:
  sink: {{type: http, settings: {{base_url: "{sink_url}", timeout: 2}}}}
flows:
  order:
    from: {{topic: orders}}
    retry: {{attempts: 3, initial_delay: 10ms, max_delay: 20ms, jitter: none}}
    steps:
{call("/reserve", undo.format(name="reservation", path="/release"))}{call("/note")}\
{call("/charge", undo.format(name="charge", path="/refund"))}{call("/ship")}"""


async def start(bus) -> str:
    r = await bus.client.post("/flows/order", json={"order": "A-1"})
    assert r.status_code == 202, r.text
    return r.json()["accepted"][0]


async def test_failure_compensates_in_reverse_then_dead_letters(make_bus, sink):
    """/ship fails permanently: /refund then /release run, and the DLQ names the saga path."""
    state, url = sink
    state.fail_next(1, status=400, path="/ship")
    async with make_bus(saga_flows(url)) as bus:
        mid = await start(bus)
        assert await bus.wait_state(mid) == MessageState.DEAD
        dl = await bus.runtime.transport.dead_letter(mid)
        history = await bus.runtime.transport.history(mid)
    assert [r.path for r in state.requests] == ["/reserve", "/note", "/charge", "/ship",
                                                "/refund", "/release"]
    assert state.requests[4].json == {"n": 3, "order": "A-1"}  # the charge's own result
    assert state.requests[5].json == {"n": 1, "order": "A-1"}
    assert "HTTP 400" in dl.error and dl.error.endswith("(compensated: steps[2], steps[0])")
    undo = [(e.step, e.outcome) for e in history if e.kind == "compensate"]
    assert undo == [("steps[2] compensate: sink.request", "ok"),
                    ("steps[0] compensate: sink.request", "ok"),
                    ("steps[3] to: sink.request", "done")]
    assert dl.step == "steps[3] to: sink.request"


async def test_compensation_is_retried_and_resumes(make_bus, sink):
    """A compensation failing retryably is retried (from the durable saga state) and the rest follows."""
    state, url = sink
    state.fail_next(1, status=400, path="/ship")
    state.fail_next(1, status=503, path="/refund")
    async with make_bus(saga_flows(url)) as bus:
        mid = await start(bus)
        assert await bus.wait_state(mid) == MessageState.DEAD
        history = await bus.runtime.transport.history(mid)
    paths = [r.path for r in state.requests]
    assert paths[4:] == ["/refund", "/refund", "/release"]
    assert paths.count("/charge") == 1  # the retry resumed compensation, not the flow
    outcomes = [(e.attempt, e.outcome) for e in history if e.kind == "compensate"][:3]
    assert outcomes == [(1, "retry"), (2, "ok"), (1, "ok")]


async def test_exhausted_retries_compensate_too(make_bus, sink):
    """A step that exhausts its retries triggers the compensations like a permanent failure."""
    state, url = sink
    state.fail_next(3, status=503, path="/ship")
    async with make_bus(saga_flows(url)) as bus:
        mid = await start(bus)
        assert await bus.wait_state(mid) == MessageState.DEAD
        dl = await bus.runtime.transport.dead_letter(mid)
    assert "retries exhausted" in dl.error and "compensated: steps[2], steps[0]" in dl.error


async def test_replayed_compensated_saga_starts_over(make_bus, sink):
    """Replaying a compensated saga runs every step again from the original body."""
    state, url = sink
    state.fail_next(1, status=400, path="/ship")
    async with make_bus(saga_flows(url)) as bus:
        mid = await start(bus)
        assert await bus.wait_state(mid) == MessageState.DEAD
        assert (await bus.client.post(f"/api/v1/dlq/{mid}/replay")).status_code == 200
        assert await bus.wait_state(mid) == MessageState.DELIVERED
    paths = [r.path for r in state.requests]
    assert paths[6:] == ["/reserve", "/note", "/charge", "/ship"]
    assert state.requests[-1].json == {"order": "A-1"}
