"""Invalid configurations: every issue is reported as 'file:line:col: path: message'."""

from __future__ import annotations

import pytest

from bus.config.loader import load_config
from bus.errors import ConfigError
from tests.bus.config.conftest import TYPES

CONNECTORS = """\
  phone: {type: phone}
  desk: {type: desk, settings: {base_url: "http://desk"}}
"""
FROM = "    from: {connector: phone, event: call.completed}\n"


def doc(flows: str, connectors: str = CONNECTORS) -> str:
    """flows.yaml text; with the default connectors, the first flow starts at line 6."""
    return f"version: 1\nconnectors:\n{connectors}flows:\n{flows}"


def one_flow(steps: str, header: str = FROM) -> str:
    """A flow 'a'; with the default header its first step is at line 9."""
    return doc(f"  a:\n{header}    steps:\n{steps}")


CASES = [
    ("unknown-key", {"flows.yaml": one_flow("      - too: desk.create_ticket\n")}, {},
     ["flows.yaml:9:9: flows.a.steps[0]: unknown key 'too' (did you mean 'to'?)"]),
    ("unknown-connector", {"flows.yaml": one_flow("      - to: dsk.create_ticket\n")}, {},
     ["flows.yaml:9:13: flows.a.steps[0].to: connector 'dsk' is not declared under "
      "connectors (did you mean 'desk'?)"]),
    ("unknown-action", {"flows.yaml": one_flow("      - to: desk.create_tiket\n")}, {},
     ["flows.yaml:9:13: flows.a.steps[0].to: connector 'desk' has no action 'create_tiket' "
      "(did you mean 'create_ticket'?)"]),
    ("unknown-event", {"flows.yaml": one_flow(
        "      - to: desk.get_ticket\n",
        "    from: {connector: phone, event: call.complete}\n")}, {},
     ["flows.yaml:7:37: flows.a.from.event: connector 'phone' has no event 'call.complete' "
      "(did you mean 'call.completed'?)"]),
    ("unknown-event-from-settings", {"flows.yaml": doc(
        "  a:\n    from: {connector: hook, event: ticket.closed}\n"
        "    steps: [{to: desk.get_ticket}]\n",
        CONNECTORS + "  hook: {type: hook, settings: {events: [ticket.opened, ticket.updated]}}\n")},
     {},
     ["flows.yaml:8:36: flows.a.from.event: connector 'hook' has no event 'ticket.closed' "
      "(did you mean 'ticket.opened'?)"]),
    ("yaml11-boolean", {"flows.yaml": one_flow(
        "      - to: desk.get_ticket\n", FROM + "    enabled: yes\n")}, {},
     ["flows.yaml:8:14: flows.a.enabled: unquoted 'yes' is read as a boolean by YAML 1.1; "
      "quote it or write true/false"]),
    ("duplicate-flow", {"flows.yaml": one_flow("      - to: desk.get_ticket\n") + (
        "  a:\n    from: {topic: t}\n    steps: [{publish: t}]\n")}, {},
     ["flows.yaml:10:3: flows: duplicate key 'a' (first defined at line 6); remove or rename one"]),
    ("bad-when", {"flows.yaml": one_flow(
        "      - to: desk.get_ticket\n", FROM + "    when: \"body.x ==\"\n")}, {},
     ["flows.yaml:8:11: flows.a.when: invalid JMESPath 'body.x ==': the expression ends too "
      "early at column 10"]),
    ("otherwise-not-last", {"flows.yaml": one_flow(
        "      - route:\n"
        "          - otherwise: [{to: desk.get_ticket}]\n"
        "          - when: body.vip\n"
        "            steps: [{to: desk.create_ticket}]\n")}, {},
     ["flows.yaml:10:13: flows.a.steps[0].route[0]: 'otherwise' must be the last branch: the "
      "1 branch(es) after it are never reached; move it to the end"]),
    ("missing-env", {"flows.yaml": doc(
        "  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
        "  phone: {type: phone}\n  desk:\n    type: desk\n    settings:\n"
        "      base_url: \"${DESK_URL}\"\n")}, {},
     ["flows.yaml:7:17: connectors.desk.settings.base_url: environment variable 'DESK_URL' "
      "is not set; set it, or give a default with ${DESK_URL:-value}"]),
    ("bad-connector-settings", {"flows.yaml": doc(
        "  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
        "  phone: {type: phone}\n  desk: {type: desk, settings: {base_url: 5, timeot: 3}}\n")},
     {},
     ["flows.yaml:4:43: connectors.desk.settings.base_url: expected string, got integer 5",
      "flows.yaml:4:46: connectors.desk.settings: unknown key 'timeot' (did you mean 'timeout'?)"]),
    ("secret-not-shown", {"flows.yaml": doc(
        "  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
        "  phone: {type: phone}\n  desk: {type: desk, settings: {base_url: x, token: 12345}}\n")},
     {},
     ["flows.yaml:4:53: connectors.desk.settings.token: expected string, got integer "
      "(secret value)"]),
    ("env-not-a-number", {"flows.yaml": "version: 1\nsettings:\n  http: {port: \"${PORT}\"}\n"
                                        "flows: {}\n"}, {"PORT": "eighty"},
     ["flows.yaml:3:16: settings.http.port: expected integer, got string 'eighty'"]),
    ("unknown-type", {"flows.yaml": doc("  a:\n" + FROM + "    steps: [{to: desk.get_ticket}]\n",
                                        "  phone: {type: phone}\n  desk: {type: dsk}\n")}, {},
     ["flows.yaml:4:16: connectors.desk.type: unknown connector type 'dsk' (did you mean 'desk'?)"]),
    ("bad-mapping-file", {
        "flows.yaml": one_flow("      - map: x\n"),
        "mappings/x.yaml": "fields:\n  a: body.a\n  requester.phone: {expr: \"phone(\"}\n"}, {},
     ["mappings/x.yaml:3:27: fields['requester.phone'].expr: invalid JMESPath 'phone(': the "
      "expression ends too early at column 7"]),
    ("unknown-mapping", {"flows.yaml": one_flow("      - map: call_to_tiket\n"),
                         "mappings/call_to_ticket.yaml": "fields: {a: body.a}\n"}, {},
     ["flows.yaml:9:14: flows.a.steps[0].map: mapping 'call_to_tiket' is not defined (no "
      "mappings_dir/call_to_tiket.yaml) (did you mean 'call_to_ticket'?)"]),
    ("bad-inline-mapping", {"flows.yaml": one_flow(
        "      - map:\n          fields:\n            a: {exp: body.a}\n")}, {},
     ["flows.yaml:11:17: flows.a.steps[0].map.fields.a.exp: unknown key 'exp'; did you mean "
      "'expr'?"]),
    ("bad-duration", {"flows.yaml": one_flow("      - publish: t\n        delay: 5 minutes\n",
                                             "    from: {topic: t}\n")}, {},
     ["flows.yaml:10:16: flows.a.steps[0].delay: a duration is a number of seconds or a string "
      "like 500ms, 30s, 5m, 2h, 7d (got '5 minutes')"]),
    ("empty-steps", {"flows.yaml": doc("  a:\n" + FROM + "    steps: []\n")}, {},
     ["flows.yaml:8:12: flows.a.steps: the steps list is empty; add at least one step"]),
    ("no-step-kind", {"flows.yaml": one_flow("      - as: x\n")}, {},
     ["flows.yaml:9:9: flows.a.steps[0]: a step needs one of validate, map, filter, route, "
      "to, publish, reply, split"]),
    ("two-kinds-in-a-step", {"flows.yaml": one_flow("      - {map: x, filter: body.a}\n")}, {},
     ["flows.yaml:9:9: flows.a.steps[0]: a step does one thing: one of validate, map, filter, "
      "route, to, publish, reply, split (map may go with to or publish); split it into two "
      "steps"]),
    ("two-sources", {"flows.yaml": one_flow("      - to: desk.get_ticket\n",
                                            "    from: {topic: t, http: GET /x}\n")}, {},
     ["flows.yaml:7:11: flows.a.from: 'from' takes one of connector (with event), topic or http"]),
    ("second-otherwise", {"flows.yaml": one_flow(
        "      - route:\n"
        "          - when: body.vip\n"
        "            steps: [{to: desk.create_ticket}]\n"
        "          - otherwise: [{to: desk.get_ticket}]\n"
        "          - otherwise: [{to: desk.get_ticket}]\n")}, {},
     ["flows.yaml:12:13: flows.a.steps[0].route[1]: 'otherwise' must be the last branch: the "
      "1 branch(es) after it are never reached; move it to the end",
      "flows.yaml:13:13: flows.a.steps[0].route[2]: a route has at most one 'otherwise'; "
      "merge the two"]),
    ("bad-flow-name", {"flows.yaml": one_flow("      - to: desk.get_ticket\n") + (
        "  b.c:\n    from: {topic: t}\n    steps: [{publish: t}]\n  d:\n" + FROM
        + "    steps: [{to: desk.nope}]\n")}, {},
     ["flows.yaml:10:3: flows: 'b.c': a flow name is letters, digits, '_' and '-', starting "
      "with a letter or '_'",
      "flows.yaml:15:18: flows.d.steps[0].to: connector 'desk' has no action 'nope'; it has: "
      "create_ticket, get_ticket"]),
    ("syntax-error", {"flows.yaml": "version: 1\nflows: {a: [}\n"}, {},
     ["flows.yaml:2:13: YAML syntax error: while parsing a flow node expected the node "
      "content, but found '}'"]),
]


@pytest.mark.parametrize(("files", "env", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_file(project, files, env, expected):
    """Each mistake is reported once, at its line and column, with a fix or a suggestion."""
    project(files)
    with pytest.raises(ConfigError) as caught:
        load_config("flows.yaml", connector_types=TYPES, env=env)
    assert [str(i) for i in caught.value.issues] == expected


def test_all_issues_reported_together(project):
    """Several mistakes in one file (and its mappings) come back in one ConfigError, in order."""
    project({
        "flows.yaml": doc(
            "  a:\n"
            "    from: {connector: phon, event: call.completed}\n"
            "    steps:\n"
            "      - too: desk.create_ticket\n"
            "      - to: desk.create_tiket\n"
            "  b:\n"
            "    from: {topic: t}\n"
            "    when: \"body.x ==\"\n"
            "    steps: [{map: x}, {publish: t, delay: soon}]\n"),
        "mappings/x.yaml": "fields:\n  a: 'body.a =='\n",
    })
    with pytest.raises(ConfigError) as caught:
        load_config("flows.yaml", connector_types=TYPES, env={})
    assert [str(i) for i in caught.value.issues] == [
        "flows.yaml:7:23: flows.a.from.connector: connector 'phon' is not declared under "
        "connectors (did you mean 'phone'?)",
        "flows.yaml:9:9: flows.a.steps[0]: unknown key 'too' (did you mean 'to'?)",
        "flows.yaml:10:13: flows.a.steps[1].to: connector 'desk' has no action 'create_tiket' "
        "(did you mean 'create_ticket'?)",
        "flows.yaml:13:11: flows.b.when: invalid JMESPath 'body.x ==': the expression ends too "
        "early at column 10",
        "flows.yaml:14:43: flows.b.steps[1].delay: a duration is a number of seconds or a "
        "string like 500ms, 30s, 5m, 2h, 7d (got 'soon')",
        "mappings/x.yaml:2:6: fields.a: invalid JMESPath 'body.a ==': the expression ends too "
        "early at column 10",
    ]
