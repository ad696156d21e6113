"""Advanced flow keys: sync flows, reply, split, sagas, canary, throttles and breakers."""

from __future__ import annotations

import pytest

from bus.config import model as m
from bus.config.loader import load_config, parse_rate
from bus.errors import ConfigError
from tests.bus.config.conftest import TYPES
from tests.bus.config.test_checks import CONNECTORS, FROM, doc, one_flow

GOOD = doc("""\
  lookup:
    from: {http: "GET /api/tickets/{id}"}
    timeout: 5s
    steps:
      - to: desk.get_ticket
        cache: 30s
        as: t
      - reply: {status: 201, map: {fields: {id: context.t.id}}}
  short:
    from: {http: "POST /api/x"}
    steps: [{reply: {fields: {ok: {const: true}}}}]
  order:
    from: {connector: phone, event: call.completed}
    canary: {flow: order_v2, percent: 10, key: body.customer_id}
    steps:
      - to: desk.create_ticket
        as: ticket
        compensate: {action: desk.get_ticket, map: {fields: {id: context.ticket.id}}}
      - split: body.items
      - publish: later
        delay: 2d
      - publish: later
        delay_expr: body.sla_seconds
  order_v2:
    from: {connector: phone, event: call.completed}
    steps: [{to: desk.create_ticket}]
  later:
    from: {topic: later}
    steps: [{to: desk.get_ticket}]
""", CONNECTORS.replace('base_url: "http://desk"}}', 'base_url: "http://desk"}, rate: 700/min, '
                        'burst: 20, circuit_breaker: {min_calls: 4, cooldown: 1m}}'))


def load(project, text):
    project({"flows.yaml": text})
    return load_config("flows.yaml", connector_types=TYPES, env={})


def test_advanced_keys_build_the_model(project):
    """Every new key lands, typed, in the model (durations in seconds, rate per second)."""
    config = load(project, GOOD)
    desk = config.connectors["desk"]
    assert desk.rate == m.Rate(700 / 60, 20.0)
    assert desk.circuit_breaker == m.BreakerPolicy(min_calls=4, cooldown=60.0)
    assert config.connectors["phone"].rate is None
    lookup = config.flows["lookup"]
    to, reply = lookup.steps
    assert (lookup.timeout, to.cache, reply.status) == (5.0, 30.0, 201)
    assert reply.mapping.inline == {"fields": {"id": "context.t.id"}}
    (short,) = config.flows["short"].steps
    assert (short.status, short.mapping.inline) == (200, {"fields": {"ok": {"const": True}}})
    order = config.flows["order"]
    assert order.canary == m.Canary("order_v2", 10.0, "body.customer_id", order.canary.loc)
    make, split, fixed, by_expr = order.steps
    assert (make.compensate.connector, make.compensate.action) == ("desk", "get_ticket")
    assert split.expr == "body.items"
    assert (fixed.delay, by_expr.delay_expr) == (172800.0, "body.sla_seconds")


@pytest.mark.parametrize(("text", "per_second"), [
    ("10/s", 10.0), ("700/min", 700 / 60), ("3600/h", 1.0), ("1 / m", 1 / 60)], ids=str)
def test_parse_rate(text, per_second):
    """Rates are a count per s, min (m) or h."""
    assert parse_rate(text) == pytest.approx(per_second)


SYNC = '    from: {http: "GET /x"}\n'
CASES = [
    ("reply-in-async-flow", one_flow("      - reply: out\n"),
     "flows.yaml:9:9: flows.a.steps[0]: reply answers an HTTP request"),
    ("split-in-sync-flow", one_flow("      - split: body.items\n", SYNC),
     "flows.yaml:9:9: flows.a.steps[0]: split makes new durable messages"),
    ("cache-in-async-flow", one_flow("      - {to: desk.get_ticket, cache: 5s}\n"),
     "flows.yaml:9:38: flows.a.steps[0].cache: cache applies to sync flows"),
    ("compensate-in-sync-flow", one_flow(
        "      - {to: desk.get_ticket, compensate: {action: desk.get_ticket}}\n", SYNC),
     "flows.yaml:9:43: flows.a.steps[0].compensate: compensate needs a durable flow"),
    ("compensate-unknown-action", one_flow(
        "      - {to: desk.get_ticket, compensate: {action: desk.undo}}\n"),
     "flows.yaml:9:52: flows.a.steps[0].compensate.action: connector 'desk' has no action "
     "'undo'"),
    ("reserved-as", one_flow("      - {to: desk.get_ticket, as: _saga}\n"),
     "flows.yaml:9:35: flows.a.steps[0].as: '_saga' is reserved for saga state"),
    ("bad-rate", doc("  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
                     CONNECTORS + "  slow: {type: desk, settings: {base_url: x}, rate: fast}\n"),
     "flows.yaml:5:53: connectors.slow.rate: a rate is <number>/<unit>"),
    ("burst-without-rate", doc("  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
                               CONNECTORS + "  slow: {type: desk, settings: {base_url: x}, "
                               "burst: 3}\n"),
     "flows.yaml:5:54: connectors.slow.burst: burst needs a rate"),
    ("breaker-typo", doc("  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
                         CONNECTORS + "  slow: {type: desk, settings: {base_url: x}, "
                         "circuit_breaker: {cooldwn: 1s}}\n"),
     "flows.yaml:5:65: connectors.slow.circuit_breaker: unknown key 'cooldwn'"),
    ("delay-and-delay-expr", one_flow("      - {publish: t, delay: 1s, delay_expr: body.d}\n",
                                      "    from: {topic: t}\n"),
     "flows.yaml:9:9: flows.a.steps[0]: a publish step takes delay or delay_expr, not both"),
    ("canary-undefined", one_flow("      - to: desk.get_ticket\n",
                                  FROM + "    canary: {flow: b, percent: 5, key: body.k}\n"),
     "flows.yaml:8:20: flows.a.canary.flow: canary flow 'b' is not defined"),
    ("canary-other-source", doc(
        "  a:\n" + FROM + "    canary: {flow: b, percent: 5, key: body.k}\n"
        "    steps: [{to: desk.get_ticket}]\n"
        "  b:\n    from: {topic: t}\n    steps: [{publish: t}]\n"),
     "flows.yaml:8:20: flows.a.canary.flow: canary flow 'b' must have the same from: as 'a'"),
    ("canary-percent", one_flow("      - to: desk.get_ticket\n",
                                FROM + "    canary: {flow: a, percent: 150, key: body.k}\n"),
     "flows.yaml:8:32: flows.a.canary.percent: 150 is too large (maximum 100)"),
    ("same-route-twice", doc(
        "  a:\n" + SYNC + "    steps: [{reply: out}]\n"
        "  b:\n" + SYNC + "    steps: [{reply: out}]\n"),
     "flows.yaml:10:18: flows.b.from.http: flow 'a' already serves GET /x"),
    ("reply-bad-status", one_flow("      - reply: {status: 99}\n", SYNC),
     "flows.yaml:9:25: flows.a.steps[0].reply.status: status is an HTTP status 100-599"),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_invalid_advanced_config(project, name, text, expected):
    """Misused advanced keys are load errors at their file:line:col, saying the fix."""
    project({"flows.yaml": text, "mappings/out.yaml": "fields: {a: body}\n"})
    with pytest.raises(ConfigError) as caught:
        load_config("flows.yaml", connector_types=TYPES, env={})
    messages = [str(i) for i in caught.value.issues]
    assert any(msg.startswith(expected) for msg in messages), messages
