"""SchemaCheck: the compiled fast accept never accepts what jsonschema rejects."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.schema_check import SchemaCheck
from connectors.http import HttpConnector

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False)
    | st.text(max_size=6) | st.sampled_from(["POST", "get", "/x", "a@b"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["path", "method", "json", "body", "query", "headers", "n", "x"]),
        inner, max_size=5),
    max_leaves=12,
)

SCHEMAS = [
    HttpConnector.actions["request"].input_schema,
    {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 65535},
        "x": {"anyOf": [{"type": "string", "minLength": 2}, {"type": "null"}]}},
     "additionalProperties": {"type": ["string", "array"], "items": {"type": "number"}}},
    {"type": "array", "items": {"enum": [1, "a", None]}, "maxItems": 3},
    {"oneOf": [{"type": "integer", "multipleOf": 3}, {"type": "integer", "multipleOf": 5}]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["http.request", "object", "array", "oneOf"])
@settings(max_examples=300, deadline=None)
@given(value=JSON)
def test_same_verdict_as_jsonschema(schema, value):
    check = SchemaCheck(schema)
    assert check.accept is not None  # these schemas take the fast path
    reference = jsonschema.validators.validator_for(schema)(schema)
    assert bool(list(check.iter_errors(value))) == bool(list(reference.iter_errors(value)))


def test_rejected_values_get_jsonschemas_errors():
    check = SchemaCheck(SCHEMAS[1])
    errors = list(check.iter_errors({"n": -1}))
    assert [e.message for e in errors] == ["-1 is less than the minimum of 0"]


@pytest.mark.parametrize("schema", [
    {"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}},
    {"type": "string", "format": "email"},
    {"type": "array", "uniqueItems": True},
    {"type": "array", "items": [{"type": "string"}]},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
    {"type": "object", "properties": {"a": {"prefixItems": [{"type": "string"}]}}},
])
def test_schemas_read_differently_have_no_fast_path(schema):
    check = SchemaCheck(schema)
    assert check.accept is None
    reference = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in check.iter_errors("not valid for most")] == [
        e.message for e in reference.iter_errors("not valid for most")]


def test_the_fast_path_does_not_fill_in_defaults():
    schema = {"type": "object", "properties": {"a": {"type": "integer", "default": 3}}}
    value = {}
    check = SchemaCheck(schema)
    assert list(check.iter_errors(value)) == [] and check.accept is not None
    assert value == {} == copy.deepcopy(value)
