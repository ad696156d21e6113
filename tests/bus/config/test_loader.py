"""A valid flows.yaml + mappings/ becomes the expected typed model."""

from __future__ import annotations

import pytest

from bus.config import model as m
from bus.config.loader import load_config, parse_duration, parse_size
from bus.errors import ConfigError
from tests.bus.config.conftest import TYPES

FULL = """\
version: 1
settings:
  transport: embedded
  data_dir: ./state
  backlog_limit: 500
  dedupe_window: 2h
  sync: normal
  sandbox: "${SANDBOX}"
  http: {host: 0.0.0.0, port: "${PORT:-9090}", max_body: 1MiB, public_url: "https://bus.test"}
connectors:
  phone: {type: phone}
  desk: {type: desk, settings: {base_url: "${DESK_URL:-http://127.0.0.1:9000}", timeout: 2.5}}
flows:
  returns:
    from: {connector: phone, event: call.completed}
    when: "body.intent == 'return'"
    concurrency: 8
    enabled: false
    retry: {attempts: 7, initial_delay: 500ms, multiplier: 3, max_delay: 5m, jitter: none,
            deadline: null}
    dead_letter: {enabled: false}
    steps:
      - validate: {type: object, required: [call_id]}
      - map: call_to_ticket
      - filter: "body.phone != null"
      - route:
          - when: body.vip
            steps:
              - to: desk.create_ticket
                map: {fields: {title: body.subject}}
                as: ticket
                retry: {attempts: 2}
          - otherwise:
              - publish: ticket.created
                delay: 30s
  created:
    from: {topic: ticket.created}
    steps:
      - validate: schemas/ticket.json
      - to: desk.get_ticket
  lookup:
    from: {http: "GET /api/tickets/{id}"}
    steps: [{to: desk.get_ticket}]
"""
MAPPING = "fields:\n  subject: body.summary\n  requester.phone: body.caller\n"
TICKET_SCHEMA = '{"type": "object", "required": ["id"]}'


def load(project, files=None, env=None, warnings=None):
    project(files or {"flows.yaml": FULL, "mappings/call_to_ticket.yaml": MAPPING,
                      "schemas/ticket.json": TICKET_SCHEMA})
    return load_config("flows.yaml", connector_types=TYPES,
                       env={"SANDBOX": "true"} if env is None else env, warnings=warnings)


def test_settings(project, tmp_path):
    """Durations, sizes, env defaults and coerced env values land in Settings."""
    settings = load(project).settings
    assert settings == m.Settings(
        transport="embedded", data_dir=tmp_path / "state", backlog_limit=500,
        dedupe_window=7200.0, sync="normal", sandbox=True,
        http=m.HttpSettings(host="0.0.0.0", port=9090, max_body_bytes=1024 * 1024,
                            public_url="https://bus.test"))
    assert settings.data_dir.is_absolute()


@pytest.mark.parametrize("value, expect", [("3", 3), ('"${WORKERS:-2}"', 2), ("-1", None)],
                         ids=["number", "from-env-default", "negative"])
def test_settings_workers(project, value, expect):
    """settings.workers is a count >= 0 (from ${ENV} too); a negative one is an error at its line."""
    text = FULL.replace("  sync: normal\n", f"  sync: normal\n  workers: {value}\n", 1)
    files = {"flows.yaml": text, "mappings/call_to_ticket.yaml": MAPPING,
             "schemas/ticket.json": TICKET_SCHEMA}
    if expect is None:
        with pytest.raises(ConfigError) as err:
            load(project, files)
        assert str(err.value) == "flows.yaml:8:12: settings.workers: -1 is too small (minimum 0)"
    else:
        assert load(project, files).settings.workers == expect


def test_connectors(project):
    """Connector settings are interpolated (default used) and keep their location."""
    desk = load(project).connectors["desk"]
    assert (desk.type, dict(desk.settings)) == (
        "desk", {"base_url": "http://127.0.0.1:9000", "timeout": 2.5})
    assert (desk.loc.file, desk.loc.line, desk.loc.column) == ("flows.yaml", 12, 3)


def test_flow_header(project):
    """Source, when, retry (durations in seconds), dead letter, concurrency and enabled."""
    flow = load(project).flows["returns"]
    assert flow.source == m.EventSource("phone", "call.completed", flow.source.loc)
    assert flow.when == "body.intent == 'return'"
    assert flow.retry == m.RetryPolicy(attempts=7, initial_delay=0.5, multiplier=3,
                                       max_delay=300.0, jitter="none", deadline=None)
    assert flow.dead_letter == m.DeadLetterRule(enabled=False)
    assert (flow.concurrency, flow.enabled, flow.loc.line) == (8, False, 14)


def test_steps(project):
    """Every step kind, a nested route with otherwise, and an inline mapping with its name."""
    validate, mapping, filter_, route = load(project).flows["returns"].steps
    assert validate.schema == {"type": "object", "required": ["call_id"]}
    assert mapping.mapping.name == "call_to_ticket" and mapping.mapping.inline is None
    assert filter_.expr == "body.phone != null"
    vip, otherwise = route.branches
    assert (vip.when, otherwise.when) == ("body.vip", None)
    (to,) = vip.steps
    assert (to.connector, to.action, to.as_, to.retry) == (
        "desk", "create_ticket", "ticket", m.RetryPolicy(attempts=2))
    assert to.mapping.name == "returns.steps[3].route[0].steps[0].map"
    assert to.mapping.inline == {"fields": {"title": "body.subject"}}
    assert otherwise.steps == (m.PublishStep("ticket.created", None, 30.0, otherwise.steps[0].loc),)
    assert (route.loc.line, to.loc.line, to.mapping.loc.line) == (26, 29, 30)


def test_sources_and_schema_files(project):
    """Topic and HTTP sources; a validate step may name a schema file next to flows.yaml."""
    config = load(project)
    created, lookup = config.flows["created"], config.flows["lookup"]
    assert created.source.topic == "ticket.created"
    assert created.steps[0].schema == {"type": "object", "required": ["id"]}
    assert (lookup.source.method, lookup.source.path) == ("GET", "/api/tickets/{id}")


def test_named_mappings_are_compiled(project):
    """Config.mappings holds each mappings/*.yaml compiled, under its file stem."""
    compiled = load(project).mappings["call_to_ticket"]
    view = {"body": {"summary": "broken", "caller": "+33 1"}, "headers": {}, "context": {}}
    assert compiled.apply(view) == {"subject": "broken", "requester": {"phone": "+33 1"}}


def test_version_follows_flow_and_mappings(project, tmp_path):
    """A flow's version is stable, and changes when a mapping it uses changes (only then)."""
    first = load(project).flows
    again = load(project).flows
    assert {n: f.version for n, f in first.items()} == {n: f.version for n, f in again.items()}
    assert all(len(f.version) == 12 for f in first.values())
    (tmp_path / "mappings/call_to_ticket.yaml").write_text(MAPPING + "  extra: body.x\n")
    changed = load_config("flows.yaml", connector_types=TYPES, env={"SANDBOX": "true"}).flows
    assert changed["returns"].version != first["returns"].version
    assert changed["lookup"].version == first["lookup"].version


def test_version_follows_env(project):
    """Interpolated values are part of the definition: a different env, a different version."""
    one = load(project, env={"SANDBOX": "true"}).flows["returns"].version
    files = {"flows.yaml": FULL.replace("concurrency: 8", "concurrency: ${C}"),
             "mappings/call_to_ticket.yaml": MAPPING, "schemas/ticket.json": TICKET_SCHEMA}
    two = load(project, files, env={"SANDBOX": "true", "C": "9"}).flows["returns"]
    assert (two.concurrency, two.version != one) == (9, True)


def test_topic_warnings(project):
    """A topic nobody publishes, or nobody consumes, is a warning, not an error."""
    warnings: list = []
    text = ("version: 1\nflows:\n  a:\n    from: {topic: orders}\n    steps: [{publish: ordrs}]\n")
    config = load(project, {"flows.yaml": text}, env={}, warnings=warnings)
    assert list(config.flows) == ["a"]
    assert [str(w) for w in warnings] == [
        "flows.yaml:4:19: flows.a.from.topic: no flow publishes topic 'orders', so this flow "
        "never runs (did you mean 'ordrs'?)",
        "flows.yaml:5:23: flows.a.steps[0].publish: no flow consumes topic 'ordrs' (from: "
        "{topic: ...}); published messages go nowhere (did you mean 'orders'?)",
    ]


def test_missing_file(project):
    """A flows.yaml that does not exist is a ConfigError naming it, not an OSError."""
    project({})
    with pytest.raises(ConfigError, match=r"^nope.yaml:1:1: cannot read the file"):
        load_config("nope.yaml", connector_types=TYPES, env={})


@pytest.mark.parametrize(("text", "seconds"), [
    (30, 30.0), (1.5, 1.5), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0),
    ("7d", 604800.0), ("45", 45.0)], ids=str)
def test_parse_duration(text, seconds):
    """Durations are seconds, or a number with ms/s/m/h/d."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [
    (100, 100), ("512KB", 512_000), ("256KiB", 262_144), ("1MiB", 1_048_576), ("2GB", 2 * 10**9),
    ("10B", 10)], ids=str)
def test_parse_size(text, size):
    """Sizes are bytes, or a number with B/KB/KiB/MB/MiB/GB/GiB."""
    assert parse_size(text) == size
