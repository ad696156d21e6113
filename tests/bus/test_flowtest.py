"""Flow tests (``tieline test``): YAML tests run the real flows on mocked connectors."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.flowtest import cli, run_tests
from connectors.registry import ConnectorRegistry

ROOT = Path(__file__).resolve().parents[2]

FLOWS = """\
version: 1
connectors:
  hooks: {type: webhook, settings: {}}
  sink: {type: http, settings: {base_url: "http://127.0.0.1:9/api", path: /audit}}
flows:
  forward_orders:
    from: {connector: hooks, event: received}
    when: "body.kind == 'order'"
    retry: {attempts: 4, initial_delay: 1s, max_delay: 1m}
    steps:
      - to: sink.request
        map:
          fields:
            method: {const: POST}
            path: {const: /orders}
            json.id: body.id
            json.total: body.total
        as: created
      - publish: order.created
        map: {fields: {id: body.id, ref: context.created.ref}}
  audit_orders:
    from: {topic: order.created}
    steps:
      - to: sink.post
  broken_map:
    from: {topic: never.published}
    steps:
      - to: sink.request
        map: {fields: {method: {const: GET}}}
  stubborn:
    from: {topic: stubborn}
    retry: {attempts: 1000, initial_delay: 1s}
    steps:
      - to: sink.request
        map: {fields: {path: {const: /x}}}
  order_status:
    from: {http: "GET /api/orders/{id}"}
    steps:
      - to: sink.request
        map:
          fields:
            method: {const: GET}
            path: "join('', ['/orders/', body.params.id])"
        as: order
      - reply:
          map: {fields: {id: body.params.id, state: context.order.state}}
"""

ORDER = "{kind: order, id: A-1, total: 12}"


@pytest.fixture(scope="module")
def registry() -> ConnectorRegistry:
    return ConnectorRegistry.from_entry_points()


@pytest.fixture
def suite(tmp_path: Path, registry: ConnectorRegistry):
    """Write flows.yaml and a test file (``tests:`` body) into tmp_path; run it."""
    (tmp_path / "flows.yaml").write_text(FLOWS)

    def run(tests: str, name: str = "orders.test.yaml"):
        path = tmp_path / "flowtests" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("tests:\n" + textwrap.indent(textwrap.dedent(tests).lstrip("\n"), "  "))
        return path, run_tests(path, registry=registry)

    return run


def test_passing_suite_covers_every_input_kind(suite):
    """Event, flow, topic and http inputs run the real flows and every expectation holds."""
    _, results = suite(f"""
        - name: order is forwarded and audited
          given:
            sink.request: {{reply: {{ref: R-9}}}}
            sink.post: {{reply: {{ok: true}}}}
          when: {{event: {{connector: hooks, name: received}}, body: {ORDER}}}
          then:
            calls:
              - sink.request: {{method: POST, json: {{id: A-1, total: 12}}}}
              - sink.post: {{id: A-1, ref: R-9}}
                exact: true
            published: [{{topic: order.created, body: {{ref: R-9}}}}]
            state: delivered
        - name: not an order is unrouted
          when: {{event: {{connector: hooks, name: received}}, body: {{kind: refund}}}}
          then: {{no_calls: [sink], state: unrouted}}
        - name: straight into a flow
          given: {{sink.post: {{reply: {{}}}}}}
          when: {{flow: audit_orders, body: {{id: B-2}}}}
          then: {{calls: [sink.post: {{id: B-2}}], state: {{audit_orders: delivered}}}}
        - name: onto a topic
          given: {{sink.post: {{reply: {{}}}}}}
          when: {{topic: order.created, body: {{id: C-3}}}}
          then: {{calls: [sink.post], state: delivered}}
        - name: sync flow answers
          given: {{sink.request: {{reply: {{state: shipped}}}}}}
          when: {{http: {{method: GET, path: /api/orders/A-1}}}}
          then:
            calls: [sink.request: {{method: GET, path: /orders/A-1}}]
            reply: {{status: 200, body: {{id: A-1, state: shipped}}, exact: true}}
    """)
    assert [(r.name, r.failures) for r in results if not r.passed] == []
    assert len(results) == 5


def test_failed_expectation_points_at_its_line(suite):
    """A payload mismatch names file:line:col of the expected value, the call and both values."""
    path, (result,) = suite(f"""
        - name: wrong total
          given: {{sink.request: {{reply: {{ref: R}}}}, sink.post: {{reply: {{}}}}}}
          when: {{event: {{connector: hooks, name: received}}, body: {ORDER}}}
          then:
            calls:
              - sink.request:
                  json: {{total: 10}}
    """)
    assert [str(f) for f in result.failures] == [
        f"{path}:8:27: then.calls[0] sink.request: payload.json.total expected 10, got 12"]


@pytest.mark.parametrize(("script", "attempts", "state"), [
    ("[{fail: 503}, {fail: timeout}, {reply: {ref: R}}]", 3, "delivered"),
    ("[{fail: 429, retry_after: 2}, {reply: {ref: R}}]", 2, "delivered"),
    ("{fail: connection_refused}", 4, "dead"),
    ("{fail: 400, body: {error: bad total}}", 1, "dead"),
], ids=["503-timeout-ok", "429-ok", "down-exhausted", "400-permanent"])
def test_scripted_failures_are_retried_and_counted(suite, script, attempts, state):
    """Retryable faults retry (with compressed delays) up to the flow's attempts; 4xx do not."""
    _, (result,) = suite(f"""
        - name: faults
          given: {{sink.request: {script}, sink.post: {{reply: {{}}}}}}
          when: {{event: {{connector: hooks, name: received}}, body: {ORDER}}}
          then:
            attempts: {{sink.request: {attempts}}}
            state: {state}
    """)
    assert result.failures == [], [str(f) for f in result.failures]
    assert len([c for c in result.calls if c.startswith("sink.request")]) == attempts


def test_wrong_attempt_count_fails(suite):
    """attempts: is checked: two scripted 503s make three calls, not two."""
    _, (result,) = suite(f"""
        - name: counted
          given: {{sink.request: [{{fail: 503}}, {{fail: 503}}, {{reply: {{}}}}], sink.post: {{reply: {{}}}}}}
          when: {{event: {{connector: hooks, name: received}}, body: {ORDER}}}
          then: {{attempts: {{sink.request: 2}}, state: delivered}}
    """)
    assert [f.message for f in result.failures] == ["expected 2 calls, got 3"]


def test_unscripted_call_fails_the_test(suite):
    """A call with no answer under given: fails with the target and its payload."""
    _, (result,) = suite(f"""
        - name: forgot the sink
          when: {{event: {{connector: hooks, name: received}}, body: {ORDER}}}
          then: {{state: dead}}
    """)
    (failure,) = result.failures
    assert "unexpected call to sink.request with payload {" in failure.message
    assert '"total":12' in failure.message


def test_invalid_payload_fails_with_the_schema_message(suite):
    """A mapping that builds a payload the real action refuses fails, naming the field."""
    _, (result,) = suite("""
        - name: no path
          given: {sink.request: {reply: {}}}
          when: {flow: broken_map, body: {}}
          then: {state: dead}
    """)
    (failure,) = result.failures
    assert "breaks the input schema of http.request" in failure.message
    assert "'path' is a required property" in failure.message


def test_stuck_message_fails_with_where_it_is(suite):
    """A message still retrying at the test's timeout fails the test, saying where it is."""
    _, (result,) = suite("""
        - name: never settles
          timeout: 0.2
          given: {sink.request: {fail: 503}}
          when: {flow: stubborn, body: {}}
          then: {state: delivered}
    """)
    stuck = [f.message for f in result.failures if "timed out" in f.message]
    assert len(stuck) == 1 and "after 0.2s" in stuck[0], result.failures
    assert "of flow 'stubborn' is still queued" in stuck[0]


@pytest.mark.parametrize(("tests", "where", "message"), [
    ("- name: x\n  when: {flow: audit_orders}\n  thne: {}\n", "4:5",
     "unknown key 'thne'"),
    ("- name: x\n  given: {sink.post: {fail: 700}}\n  when: {flow: audit_orders}\n  then: {}\n",
     "3:31", "fail must be an HTTP status 400-599"),
    ("- name: x\n  given: {sink.pots: {reply: 1}}\n  when: {flow: audit_orders}\n  then: {}\n",
     "3:13", "connector 'sink' (type http) has no action 'pots' (did you mean 'post'?)"),
    ("- name: x\n  when: {flow: audit_order}\n  then: {state: delivered}\n", "3:18",
     "no flow 'audit_order'"),
], ids=["unknown-key", "bad-fail", "unknown-action", "unknown-flow"])
def test_malformed_file_is_an_error_with_file_line(suite, tests, where, message):
    """A malformed test is refused before anything runs, with file:line:col and the fix."""
    with pytest.raises(ConfigError) as info:
        suite(tests)
    text = str(info.value)
    assert f"orders.test.yaml:{where}: " in text and message in text, text


@pytest.mark.parametrize(("suite", "at_least"), [("returns", 6), ("risk", 4), ("hotline", 4)],
                         ids=["returns", "risk", "hotline"])
def test_shipped_scenario_suites_pass(suite, at_least):
    """Each reference scenario's flow tests pass against the shipped flows.yaml."""
    results = run_tests(ROOT / "flowtests" / f"{suite}.test.yaml")
    assert [(r.name, [str(f) for f in r.failures]) for r in results if not r.passed] == []
    assert len(results) >= at_least


@pytest.mark.parametrize(("tests", "code"), [
    ("- name: ok\n  given: {sink.post: {reply: {}}}\n  when: {flow: audit_orders, body: {}}\n"
     "  then: {state: delivered}\n", 0),
    ("- name: bad\n  given: {sink.post: {reply: {}}}\n  when: {flow: audit_orders, body: {}}\n"
     "  then: {state: filtered}\n", 1),
    ("- name: malformed\n  when: {flow: audit_orders}\n", 2),
], ids=["pass", "fail", "malformed"])
def test_cli_exit_codes_and_summary(tmp_path, capsys, tests, code):
    """tieline test exits 0 / 1 / 2 and prints 'N passed, M failed' alone on a line."""
    (tmp_path / "flows.yaml").write_text(FLOWS)
    (tmp_path / "t.test.yaml").write_text("tests:\n" + textwrap.indent(tests, "  "))
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["test", str(tmp_path)])
    assert args.fn(args) == code
    out = capsys.readouterr().out.splitlines()
    if code < 2:
        assert out[-1] == f"{1 - code} passed, {code} failed"
