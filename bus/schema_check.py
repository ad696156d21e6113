"""JSON Schema checks on the message path: jsonschema's verdict, with a compiled fast accept.

jsonschema walks the schema for every value (40-90 µs for an action's input, on every outbound
call); fastjsonschema compiles it to Python once (~2 µs a check). The compiled check only
*accepts*: a value it rejects goes to jsonschema, whose errors are what operators read. It is
used only for schemas made of keywords both read the same way (below); anything else
(``$ref``, ``format``, ``uniqueItems``, tuple ``items``, a ``$schema`` draft...) is checked by
jsonschema alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jsonschema

# Keywords whose meaning is the same in jsonschema's default draft (2020-12) and
# fastjsonschema's (draft 7), and the annotations both ignore.
_SAME = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "minProperties", "maxProperties",
    "allOf", "anyOf", "oneOf", "not", "title", "description", "examples", "default",
    "$comment", "errorMessage",
})


class SchemaCheck:
    """A drop-in for a jsonschema validator where only ``iter_errors`` is used."""

    def __init__(self, schema: Mapping[str, Any]):
        self.schema = schema
        self.validator = jsonschema.validators.validator_for(schema)(schema)
        self._accept: Callable[[Any], bool] | None | bool = False  # False: not compiled yet

    @property
    def accept(self) -> Callable[[Any], bool] | None:
        """The fast accept, compiled on first use (start-up compiles no schema it can skip)."""
        if self._accept is False:
            self._accept = fast_accept(self.schema)
        return self._accept  # type: ignore[return-value]

    def iter_errors(self, value: Any) -> Iterator[jsonschema.ValidationError]:
        accept = self.accept
        if accept is not None and accept(value):
            return iter(())
        return self.validator.iter_errors(value)


def fast_accept(schema: Any) -> Callable[[Any], bool] | None:
    """A compiled ``value -> valid?`` for ``schema``, or None where it may disagree."""
    if not _same_in_both(schema):
        return None
    import fastjsonschema  # ~17 ms: loaded with the first schema it compiles

    try:  # no defaults written into the value, no format assertions (jsonschema has none)
        check = fastjsonschema.compile(_plain(schema), use_default=False, use_formats=False,
                                       detailed_exceptions=False)
    except Exception:  # noqa: BLE001 - a schema it cannot compile is simply not fast-pathed
        return None

    def accept(value: Any) -> bool:
        try:
            check(value)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return accept


def _plain(value: Any) -> Any:
    """Dicts and lists all the way down (a loaded schema may hold read-only mappings)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _same_in_both(schema: Any) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or not schema.keys() <= _SAME:
        return False
    for key, sub in schema.items():
        if key == "properties":
            if not (isinstance(sub, Mapping) and all(_same_in_both(s) for s in sub.values())):
                return False
        elif key in ("additionalProperties", "not"):
            if not _same_in_both(sub):
                return False
        elif key == "items":  # a list here is a tuple in draft 7 but not in 2020-12
            if isinstance(sub, list) or not _same_in_both(sub):
                return False
        elif key in ("allOf", "anyOf", "oneOf"):
            if not (isinstance(sub, list) and all(_same_in_both(s) for s in sub)):
                return False
    return True
