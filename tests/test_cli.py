"""The command line: validate, map, send, messages, dlq — against files, and against a running bus."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import cli
from connectors.testing.server import run_in_thread
from connectors.testing.sink import SinkState, make_sink_app
from tests.e2e.test_delivery import MAPPING, ORDER, flows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    """A flows.yaml + mapping in a temp dir, delivering to a sink served in a thread."""
    state = SinkState()
    with run_in_thread(make_sink_app(state)) as url:
        (tmp_path / "mappings").mkdir()
        (tmp_path / "mappings" / "order_to_sink.yaml").write_text(MAPPING)
        text = flows(url).replace("port: 0", "")
        text = text.replace("  data_dir: ./data", f"  data_dir: {tmp_path / 'data'}\n  http: {{port: 1}}")
        (tmp_path / "flows.yaml").write_text(text)
        (tmp_path / "order.json").write_text(json.dumps(ORDER))
        yield tmp_path, state


def test_validate_shipped_flows_is_ok(capsys):
    """The shipped flows.yaml validates with exit code 0."""
    assert cli.main(["validate", str(ROOT / "flows.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_prints_every_error_with_location(tmp_path, capsys):
    """An invalid file prints each error as file:line:col and exits 1."""
    bad = tmp_path / "flows.yaml"
    bad.write_text(
        "version: 1\n"
        "connectors:\n"
        "  sink: {type: htp, settings: {}}\n"
        "flows:\n"
        "  f:\n"
        "    from: {topic: t}\n"
        "    steps:\n"
        "      - too: sink.post\n"
    )
    assert cli.main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:16: connectors.sink.type: unknown connector type 'htp'" in err
    assert f"{bad}:8:9: flows.f.steps[0]: unknown key 'too'" in err
    assert "(did you mean 'to'?)" in err
    assert "2 error(s)" in err


def test_map_explain_shows_sources_and_values(project, capsys):
    """`tieline map --explain` prints each target with its expression and value, then the result."""
    path, _ = project
    code = cli.main(["map", "order_to_sink", "--input", str(path / "order.json"), "--explain",
                     "--config", str(path / "flows.yaml")])
    assert code == 0
    out = capsys.readouterr().out
    assert "phone ← e164(body.data.phone, 'US') = \"+14155550100\"" in out
    assert json.loads(out[out.index("{"):]) == {"order": "A-1", "phone": "+14155550100", "total": 12}


def test_send_offline_runs_the_flow_and_prints_history(project, capsys):
    """With no bus running, `tieline send` runs the flow in-process and prints the ledger."""
    path, sink = project
    code = cli.main(["send", "relay", "--data", str(path / "order.json"),
                     "--config", str(path / "flows.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "state delivered" in out
    assert "steps[1] to: sink.request  attempt 1  ok" in out
    assert len(sink.delivered) == 1


def test_dlq_offline_list_replay_and_messages(project, capsys):
    """Dead letters can be listed and replayed from the data file; the replay then delivers."""
    path, sink = project
    cfg = ["--config", str(path / "flows.yaml")]
    sink.fail_next(1, status=422, json={"error": "bad order"})
    assert cli.main(["send", "relay", "--data", str(path / "order.json"), *cfg]) == 1
    capsys.readouterr()
    assert cli.main(["dlq", "list", "--json", *cfg]) == 0
    (dl,) = json.loads(capsys.readouterr().out)
    assert "422" in dl["error"] and dl["step"] == "steps[1] to: sink.request"
    assert cli.main(["dlq", "replay", dl["message_id"], *cfg]) == 0
    assert "replayed 1 message(s)" in capsys.readouterr().out
    # The replayed message runs at the next start; `send` starts the bus with consumers.
    assert cli.main(["send", "relay", "--data", str(path / "order.json"), *cfg]) == 0
    capsys.readouterr()
    assert cli.main(["messages", "show", dl["message_id"], *cfg]) == 0
    out = capsys.readouterr().out
    assert "replayed" in out and "state delivered" in out
    assert len(sink.delivered) == 2


async def test_dlq_against_a_running_bus(make_bus, sink):
    """With a bus running, the CLI talks to its API: list, show and purge a dead letter."""
    state, url = sink
    state.fail_next(1, status=400)
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        r = await bus.client.post("/flows/relay", json=ORDER)
        (mid,) = r.json()["accepted"]
        await bus.wait_state(mid)
        remote = ["--url", bus.url]
        listing = await asyncio.to_thread(_run_capture, ["dlq", "list", *remote])
        assert mid in listing[1] and listing[0] == 0
        purge = await asyncio.to_thread(_run_capture, ["dlq", "purge", mid, *remote])
        assert purge == (0, "purged 1 dead letter(s)\n")
        assert await bus.runtime.transport.dead_letter(mid) is None


def _run_capture(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(argv)
    return code, buf.getvalue()
