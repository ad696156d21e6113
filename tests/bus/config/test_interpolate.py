"""${VAR} interpolation of string scalars, and coercion of env strings to schema types."""

from __future__ import annotations

import pytest

from bus.config.interpolate import coerce, interpolate
from bus.config.yamlload import MarkIndex, load_yaml


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("${A}", {"A": "x"}, "x"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A:-}", {}, ""),
    ("${A:-http://h:1/p}", {}, "http://h:1/p"),
    ("$${A}", {"A": "x"}, "${A}"),
    ("a-${A}-${B:-b}-$${C}", {"A": "1"}, "a-1-b-${C}"),
    ("cost: $5", {}, "cost: $5"),
], ids=["set", "default", "empty-uses-default", "empty-default", "default-with-colons",
        "escape", "mixed", "lone-dollar"])
def test_expand(text, env, expected):
    """References are replaced, defaults apply when unset or empty, $${ is a literal ${."""
    issues = []
    data, _, failed = interpolate({"k": text}, MarkIndex("f"), env, issues)
    assert (data["k"], issues, failed) == (expected, [], set())


def test_missing_variable_is_located(project):
    """An unset variable without a default is an issue at the scalar's line, naming it."""
    project({"f.yaml": "a:\n  b: [x, \"${NOPE}\"]\n  c: \"${BAD\"\n"})
    data, marks = load_yaml("f.yaml")
    issues = []
    _, touched, failed = interpolate(data, marks, {}, issues)
    assert [str(i) for i in issues] == [
        "f.yaml:2:10: a.b[1]: environment variable 'NOPE' is not set; set it, or give a "
        "default with ${NOPE:-value}",
        "f.yaml:3:6: a.c: '${BAD' is not a valid reference; write ${NAME} or "
        "${NAME:-default}, or $${ for a literal '${'",
    ]
    assert failed == touched == {("a", "b", 1), ("a", "c")}


def test_coerce_only_interpolated_values():
    """Env strings become the integer/number/boolean the schema wants; literal strings stay."""
    schema = {"type": "object", "properties": {
        "port": {"type": "integer"}, "ratio": {"type": "number"}, "on": {"type": "boolean"},
        "name": {"type": "string"}, "bad": {"type": "integer"}, "typed": {"type": "integer"}}}
    data = {"port": "8080", "ratio": "0.5", "on": "true", "name": "42", "bad": "x",
            "typed": "7"}
    coerce(data, schema, {("port",), ("ratio",), ("on",), ("name",), ("bad",)})
    assert data == {"port": 8080, "ratio": 0.5, "on": True, "name": "42", "bad": "x",
                    "typed": "7"}


def test_coerce_says_whether_the_data_is_valid_now():
    """True only when every error it met was a converted string that now fits its schema:
    the loader then skips a second validation pass."""
    schema = {"type": "object", "properties": {"port": {"type": "integer", "maximum": 65535},
                                               "name": {"type": "string", "minLength": 2}}}
    assert coerce({"port": 8080}, schema, {("port",)}) is True
    data = {"port": "8080"}
    assert coerce(data, schema, {("port",)}) is True and data == {"port": 8080}
    assert coerce({"port": "99999"}, schema, {("port",)}) is False  # converted, still invalid
    assert coerce({"port": "x"}, schema, {("port",)}) is False  # not convertible
    assert coerce({"port": "80", "name": "a"}, schema, {("port",)}) is False  # another error
    assert coerce({"port": 8080}, schema, set()) is False  # nothing interpolated: not validated
