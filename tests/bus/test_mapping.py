"""Mappings: compile-time checks with spec paths, and what apply/explain produce."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.errors import MappingError
from bus.functions import TielineFunctions, to_text
from bus.mapping import (
    FieldTrace,
    MappingSpecError,
    compile_expression,
    compile_mapping,
)

VIEW: dict[str, Any] = {
    "body": {
        "call_id": "c-1",
        "order_id": None,
        "caller": {"name": "Ada", "phone": "(415) 555-2671"},
        "customer": {"tier": "gold", "since": 2019},
        "transcript": "I will call my lawyer about this",
        "tags": ["vip"],
    },
    "headers": {"source": "callcenter"},
    "context": {"ticket": {"id": 7}},
}


def apply(fields: dict[str, Any], view: dict[str, Any] = VIEW, **top: Any) -> Any:
    return compile_mapping("m", {"fields": fields, **top}).apply(view)


APPLY_CASES = [
    ({"name": "body.caller.name"}, {"name": "Ada"}, "expr-string"),
    ({"a.b.c": "body.call_id"}, {"a": {"b": {"c": "c-1"}}}, "nested-target"),
    (
        {"r.name": "body.caller.name", "r.phone": "e164(body.caller.phone, 'US')"},
        {"r": {"name": "Ada", "phone": "+14155552671"}},
        "siblings-share-parent",
    ),
    ({"p": {"const": "normal"}}, {"p": "normal"}, "const"),
    ({"p": {"const": {"k": [1]}}}, {"p": {"k": [1]}}, "const-object"),
    ({"t": {"expr": "body.missing", "default": "standard"}}, {"t": "standard"}, "default-on-null"),
    ({"t": {"expr": "body.customer.tier", "default": "x"}}, {"t": "gold"}, "default-unused"),
    ({"t": {"expr": "body.missing", "default": []}}, {"t": []}, "default-empty-list"),
    ({"o": "body.order_id", "c": "body.call_id"}, {"c": "c-1"}, "null-omitted"),
    ({"x": "context.ticket.id"}, {"x": 7}, "context-visible"),
    ({"x": "headers.source"}, {"x": "callcenter"}, "headers-visible"),
    (
        {"c": {"template": "Call {body.call_id} about {body.order_id || 'unknown'}"}},
        {"c": "Call c-1 about unknown"},
        "template",
    ),
    (
        {"c": {"template": "{{literal}} {body.call_id}}}"}},
        {"c": "{literal} c-1}"},
        "template-escapes",
    ),
    ({"c": {"template": "n={body.order_id}"}}, {"c": "n="}, "template-null-empty"),
    (
        {"c": {"template": "{body.customer}"}},
        {"c": '{"tier":"gold","since":2019}'},
        "template-object",
    ),
    ({"c": {"template": "{ {t: body.customer.tier}.t }"}}, {"c": "gold"}, "template-nested-braces"),
    ({"c": {"template": "{'}'}"}}, {"c": "}"}, "template-quoted-brace"),
    ({"c": {"template": "plain"}}, {"c": "plain"}, "template-no-placeholder"),
]


@pytest.mark.parametrize(
    ("fields", "expected"), [c[:2] for c in APPLY_CASES], ids=[c[2] for c in APPLY_CASES]
)
def test_apply(fields: dict[str, Any], expected: Any) -> None:
    """Each kind of field source lands in the right place with the right value."""
    assert apply(fields) == expected


def test_omit_null_false_keeps_nulls() -> None:
    """With omit_null: false a null field is set to null instead of dropped."""
    assert apply({"o": "body.order_id", "x.y": "body.nope"}, omit_null=False) == {
        "o": None,
        "x": {"y": None},
    }


def test_vars_are_visible_to_expressions() -> None:
    """vars.<name> reads the mapping's constants."""
    fields = {
        "risky": "contains_any(body.transcript, vars.words)",
        "hits": "matched_keywords(body.transcript, vars.words)",
    }
    out = apply(fields, vars={"words": ["fraud", "lawyer"]})
    assert out == {"risky": True, "hits": ["lawyer"]}


VARS = {"words": ["fraud", "lawyer"], "nums": [1, 2], "table": {"gold": "G"}}
VARS_CASES = [
    ("vars.words[1]", "lawyer", "index"),
    ("vars.table.gold", "G", "path"),
    ("get(vars.table, body.customer.tier)", "G", "lookup"),
    ("vars", VARS, "whole"),
    ("vars.nope.deeper", None, "missing"),
    ("length(vars.words)", 2, "function"),
    ("keys(@)", ["body", "headers", "context", "vars"], "root-keys"),
    ("*.table.gold", ["G"], "root-wildcard"),
    ("body.vars", None, "not-at-root"),
]


@pytest.mark.parametrize(
    ("expr", "expected"), [c[:2] for c in VARS_CASES], ids=[c[2] for c in VARS_CASES]
)
def test_vars_read_any_way(expr: str, expected: Any) -> None:
    """vars reads like part of the view, whether compiled in or looked up through '@' or '*'."""
    view = copy.deepcopy(VIEW)
    out = apply({"x": expr, "t": {"template": "{" + expr + "}"}}, view, vars=VARS)
    assert out.get("x") == expected and out["t"] == to_text(expected)
    assert view == VIEW  # 'vars' is never added to the caller's view


def test_vars_of_the_wrong_type_fail_per_message() -> None:
    """A var of the wrong type for a function is a MappingError when applied, as before."""
    mapping = compile_mapping(
        "m", {"vars": VARS, "fields": {"r": "contains_any(body.transcript, vars.nums)"}}
    )
    with pytest.raises(MappingError, match=r"field 'r'.*contains_any\(\)"):
        mapping.apply(VIEW)


def test_base_from_vars_is_copied() -> None:
    """A base taken from vars is a copy: applying never changes the mapping's constants."""
    mapping = compile_mapping(
        "m", {"vars": {"start": {"kind": "call"}}, "base": "vars.start", "fields": {"n": "`1`"}}
    )
    assert mapping.apply(VIEW) == {"kind": "call", "n": 1}
    assert mapping.vars == {"start": {"kind": "call"}}


def test_base_is_merged_and_fields_override() -> None:
    """base copies an object; fields set and override keys in it, nested too."""
    out = apply({"customer.tier": {"const": "platinum"}, "extra": "headers.source"}, base="body")
    assert out["customer"] == {"tier": "platinum", "since": 2019}
    assert out["extra"] == "callcenter" and out["call_id"] == "c-1"


def test_base_only_mapping() -> None:
    """A mapping may be just a base (a copy of part of the message)."""
    assert compile_mapping("m", {"base": "body.caller"}).apply(VIEW) == VIEW["body"]["caller"]


def test_apply_never_changes_the_input() -> None:
    """Nested writes into a base copy, defaults and consts never alias or mutate the message."""
    view = copy.deepcopy(VIEW)
    mapping = compile_mapping(
        "m",
        {
            "base": "body",
            "fields": {"customer.tier": {"const": "x"}, "l": {"expr": "body.nope", "default": []}},
        },
    )
    first = mapping.apply(view)
    first["l"].append(1)
    assert view == VIEW
    assert mapping.apply(view)["l"] == []


def test_base_must_be_an_object() -> None:
    """A base that is not an object fails with the mapping name and the fix."""
    mapping = compile_mapping("m", {"base": "body.tags", "fields": {}})
    with pytest.raises(
        MappingError, match=r"mapping 'm': base 'body.tags' gave list, not an object"
    ):
        mapping.apply(VIEW)


def test_target_through_a_non_object_in_base_fails() -> None:
    """Setting a.b when base has a scalar at a says which target and which part."""
    mapping = compile_mapping("m", {"base": "body", "fields": {"call_id.x": {"const": 1}}})
    with pytest.raises(MappingError, match=r"field 'call_id.x': 'call_id' in the base is str"):
        mapping.apply(VIEW)


def test_runtime_error_names_mapping_field_and_expression() -> None:
    """A function given the wrong type raises MappingError naming mapping, field and expression."""
    mapping = compile_mapping("returns", {"fields": {"since": "lower(body.customer.since)"}})
    with pytest.raises(MappingError) as info:
        mapping.apply(VIEW)
    text = str(info.value)
    assert "mapping 'returns'" in text and "field 'since'" in text
    assert "lower(body.customer.since)" in text and "lower()" in text


def test_runtime_error_in_template_names_field() -> None:
    """A failing template placeholder also names the field and the template."""
    mapping = compile_mapping("m", {"fields": {"c": {"template": "t {add_seconds('x', `1`)}"}}})
    with pytest.raises(MappingError, match=r"field 'c' \(t \{add_seconds"):
        mapping.apply(VIEW)


def test_explain_traces_every_field() -> None:
    """explain returns the same body as apply and one trace per field, omitted ones included."""
    spec = {
        "fields": {
            "tier": {"expr": "body.nope", "default": "standard"},
            "prio": {"const": "normal"},
            "order": "body.order_id",
            "c": {"template": "x{body.call_id}"},
        }
    }
    mapping = compile_mapping("m", spec)
    body, traces = mapping.explain(VIEW)
    assert body == mapping.apply(VIEW)
    assert traces == [
        FieldTrace("tier", "body.nope", "standard", True),
        FieldTrace("prio", '"normal"', "normal", False),
        FieldTrace("order", "body.order_id", None, False),
        FieldTrace("c", "x{body.call_id}", "xc-1", False),
    ]


def test_injected_clock_reaches_mapping() -> None:
    """A mapping compiled with a given TielineFunctions uses its clock."""
    funcs = TielineFunctions(clock=lambda: 0.0)
    mapping = compile_mapping("m", {"fields": {"at": "now()"}}, funcs)
    assert mapping.apply(VIEW) == {"at": "1970-01-01T00:00:00.000Z"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("body.customer.tier", True),
        ("body.order_id", False),
        ("body.tags", True),
        ("`[]`", False),
        ("`{}`", False),
        ("''", False),
        ("`0`", True),
        ("`false`", False),
    ],
    ids=["string", "null", "list", "empty-list", "empty-object", "empty-string", "zero", "false"],
)
def test_expression_truthy(source: str, expected: bool) -> None:
    """truthy follows JMESPath: false, null, '', [] and {} are false, 0 is true."""
    assert compile_expression(source).truthy(VIEW) is expected


def test_expression_search_wraps_errors() -> None:
    """Expression.search turns a runtime failure into MappingError naming the expression."""
    with pytest.raises(MappingError, match=r"expression 'upper\(body.tags\)' failed"):
        compile_expression("upper(body.tags)").search(VIEW)


SPEC_ERRORS = [
    (
        {"fields": {"a": "body.["}},
        ["fields", "a"],
        "invalid JMESPath 'body.\\[': the expression ends too early at column 7",
        "bad-jmespath",
    ),
    ({"fields": {"a": "x or y"}}, ["fields", "a"], "writes or/and/not as \\|\\|", "or-hint"),
    ({"fields": {"a": {"expr": "a..b"}}}, ["fields", "a", "expr"], "column 3", "bad-expr-key"),
    (
        {"fields": {"a": "e165(body.x)"}},
        ["fields", "a"],
        "unknown function e165\\(\\).*did you mean e164",
        "unknown-function",
    ),
    (
        {"fields": {"a": "lower(body.x, 'y')"}},
        ["fields", "a"],
        "lower\\(\\) takes 1 argument",
        "arity",
    ),
    ({"fields": {"a": "coalesce(body.x)"}}, ["fields", "a"], "at least 2", "arity-variadic"),
    (
        {"fields": {"a": {"expr": "x", "defualt": 1}}},
        ["fields", "a", "defualt"],
        "did you mean 'default'",
        "unknown-field-key",
    ),
    (
        {"fields": {"a": {"expr": "x", "const": 1}}},
        ["fields", "a"],
        "exactly one of expr, const, template \\(got expr and const\\)",
        "two-sources",
    ),
    ({"fields": {"a": {"default": 1}}}, ["fields", "a"], "got none", "no-source"),
    ({"fields": {"items[]": "body.tags"}}, ["fields", "items[]"], "list targets", "list-target"),
    ({"fields": {"a..b": "x"}}, ["fields", "a..b"], "empty part", "empty-target-part"),
    ({"fields": {"a": "x", "a.b": "y"}}, ["fields", "a.b"], "overlaps 'a'", "overlapping-targets"),
    ({"fields": {"a": 5}}, ["fields", "a"], "for a constant write \\{const: 5\\}", "bare-constant"),
    (
        {"fields": {"a": {"template": "x {"}}},
        ["fields", "a", "template"],
        "never closed",
        "template-unclosed",
    ),
    (
        {"fields": {"a": {"template": "x } y"}}},
        ["fields", "a", "template"],
        "unmatched '}' at column 3",
        "template-stray-brace",
    ),
    (
        {"fields": {"a": {"template": "x {} y"}}},
        ["fields", "a", "template"],
        "empty placeholder",
        "template-empty",
    ),
    (
        {"fields": {"a": {"template": "{body.[}"}}},
        ["fields", "a", "template"],
        "invalid JMESPath",
        "template-bad-expr",
    ),
    (
        {"fields": {"a": {"template": 5}}},
        ["fields", "a", "template"],
        "a template is a string",
        "template-not-string",
    ),
    ({"fields": {"a": "x"}, "feilds": {}}, ["feilds"], "did you mean 'fields'", "unknown-top-key"),
    ({"vars": {}}, ["fields"], "needs 'fields'", "no-fields"),
    ({"fields": ["a"]}, ["fields"], "must be an object", "fields-not-object"),
    ({"fields": {"a": "x"}, "vars": [1]}, ["vars"], "must be an object", "vars-not-object"),
    (
        {"fields": {"a": "x"}, "omit_null": "yes"},
        ["omit_null"],
        "true or false",
        "omit-null-not-bool",
    ),
    ({"base": "body.[", "fields": {}}, ["base"], "invalid JMESPath", "bad-base"),
    ({"fields": {"a": ""}}, ["fields", "a"], "non-empty", "empty-expression"),
]


@pytest.mark.parametrize(
    ("spec", "path", "message"), [c[:3] for c in SPEC_ERRORS], ids=[c[3] for c in SPEC_ERRORS]
)
def test_compile_errors_carry_path_and_message(
    spec: dict[str, Any], path: list[Any], message: str
) -> None:
    """Every spec problem is a MappingSpecError with its path inside the spec and a clear message."""
    with pytest.raises(MappingSpecError) as info:
        compile_mapping("m", spec)
    assert info.value.path == path
    assert info.value.message
    assert re.search(message, info.value.message), info.value.message


def test_spec_error_str_renders_path() -> None:
    """str(MappingSpecError) starts with a readable path, quoting dotted targets."""
    with pytest.raises(MappingSpecError) as info:
        compile_mapping("m", {"fields": {"r.phone": {"expr": "e164(", "default": None}}})
    assert str(info.value).startswith("fields['r.phone'].expr: invalid JMESPath")


def test_spec_must_be_an_object() -> None:
    """A mapping that is not an object is refused at the root."""
    with pytest.raises(MappingSpecError, match="is an object with 'fields'") as info:
        compile_mapping("m", ["a"])  # type: ignore[arg-type]
    assert info.value.path == []


def test_readme_example_gives_the_documented_output() -> None:
    """The example in mappings/README.md compiles and produces the JSON shown there."""
    text = (Path(__file__).parents[2] / "mappings" / "README.md").read_text()
    spec = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    expected = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    body = {
        "call_id": "c-1",
        "caller": {"name": "Ada", "phone": "(415) 555-2671"},
        "transcript": "where is my blender?",
    }
    view = {"body": body, "headers": {}, "context": {}}
    assert compile_mapping("callback_ticket", spec).apply(view) == expected
