"""flows.schema.json: a valid draft 2020-12 schema that documents every key for editors."""

from __future__ import annotations

from typing import Any

import jsonschema

from bus.config.loader import SCHEMA


def _objects(node: Any, path: str = "#"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}/{i}")


def test_schema_is_valid():
    """The shipped schema passes the draft 2020-12 meta-schema."""
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_key_is_described_and_closed():
    """Each declared property has a description; each object with properties rejects others."""
    missing, open_ = [], []
    for path, node in _objects(SCHEMA):
        for key, sub in node.get("properties", {}).items() if isinstance(
                node.get("properties"), dict) else ():
            target = SCHEMA["$defs"][sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
            if "description" not in sub and "description" not in target:
                missing.append(f"{path}/properties/{key}")
        if "properties" in node and node.get("additionalProperties") is not False:
            open_.append(path)
    assert (missing, open_) == ([], [])
