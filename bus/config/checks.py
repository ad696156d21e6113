"""Checks that turn a configuration's problems into located :class:`ConfigIssue` s.

Two kinds, reported together: JSON Schema errors (the shape of flows.yaml and of each
connector's settings), translated into short messages at the right line with a did-you-mean
for unknown keys; and semantic checks the schema cannot express (declared connectors, the
events and actions of their types, mapping names, route order, topics nobody uses).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

from bus.config.model import (
    Flow,
    HttpSource,
    PublishStep,
    ReplyStep,
    RouteStep,
    SplitStep,
    Step,
    TopicSource,
    ToStep,
)
from bus.config.suggest import did_you_mean
from bus.config.yamlload import MarkIndex, YamlPath
from bus.errors import ConfigIssue
from connectors.base import Connector

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}
_GENERIC = {"additionalProperties", "required", "type"}  # these read better than errorMessage


def schema_issues(data: Any, schema: Mapping[str, Any], marks: MarkIndex, base: YamlPath = (),
                  secrets: frozenset[str] = frozenset()) -> list[tuple[YamlPath, ConfigIssue]]:
    """Every JSON Schema error of ``data`` (found at ``base`` in the file) as a located issue.

    Returns ``(path, issue)`` pairs so the caller knows which parts of the file are broken.
    ``secrets`` are setting names whose values never appear in a message.
    """
    validator = jsonschema.validators.validator_for(schema)(schema)
    found: dict[Any, tuple[int, YamlPath, ConfigIssue]] = {}
    for error in validator.iter_errors(data):
        for rank, slot, path, issue in _translate(error, marks, base, secrets):
            if slot not in found or rank < found[slot][0]:
                found[slot] = (rank, path, issue)
    unknown_at = {slot[1] for slot in found if slot[0] == "unknown"}
    return [(path, issue) for slot, (_, path, issue) in found.items()
            if not (slot[0] == "anyOf" and slot[1] in unknown_at)]  # a typo explains the rest


def _translate(error: jsonschema.ValidationError, marks: MarkIndex, base: YamlPath,
               secrets: frozenset[str]) -> Iterable[tuple[int, Any, YamlPath, ConfigIssue]]:
    path = (*base, *error.absolute_path)
    kind, inst, schema = error.validator, error.instance, error.schema
    custom = schema.get("errorMessage") if isinstance(schema, dict) else None
    if error.relative_schema_path and list(error.relative_schema_path)[-2:-1] == ["propertyNames"]:
        key_path = (*path, inst)
        if kind == "enum":
            hint = did_you_mean(inst, error.validator_value)
            msg = f"unknown key '{inst}'" + ("" if hint else _allowed(error.validator_value))
            yield 1, ("unknown", path, inst), key_path, marks.issue(
                key_path, msg, hint, at_key=True, shown=path)
        else:  # a bad name breaks only its own entry
            msg = f"'{inst}': {custom or error.message}"
            yield 0, ("name", path, inst), key_path, marks.issue(
                key_path, msg, at_key=True, shown=path)
        return
    if kind == "additionalProperties" and isinstance(inst, dict):
        known = list(schema.get("properties", {}))
        for key in inst:
            if key in known:
                continue
            hint = did_you_mean(key, known)
            msg = f"unknown key '{key}'" + ("" if hint else _allowed(known))
            yield 0, ("unknown", path, key), path, marks.issue((*path, key), msg, hint,
                                                                at_key=True, shown=path)
        return
    if kind == "required" and isinstance(inst, dict):
        for key in error.validator_value:
            if key not in inst:
                yield 0, ("required", path, key), path, marks.issue(
                    path, f"missing required key '{key}'")
        return
    if custom and kind not in _GENERIC:
        scalar = isinstance(inst, str | int | float) and not isinstance(inst, bool)
        msg = f"{custom} (got {_show(inst, path, secrets)})" if scalar else custom
    else:
        msg = _message(kind, error, _show(inst, path, secrets))
    slot = ("anyOf", path) if kind == "anyOf" else (kind, path, msg)
    yield 0, slot, path, marks.issue(path, msg)


def _message(kind: str, error: jsonschema.ValidationError, shown: str) -> str:
    value = error.validator_value
    if kind == "type":
        wanted = " or ".join([value] if isinstance(value, str) else value)
        got = _JSON_TYPES.get(type(error.instance), "value")
        return f"expected {wanted}, got {got}" + ("" if got == "null" else f" {shown}")
    if kind == "enum":
        hint = did_you_mean(error.instance, value) if isinstance(error.instance, str) else None
        extra = f"; did you mean {hint}?" if hint else ""
        return f"{shown} is not one of: {', '.join(map(str, value))}{extra}"
    if kind in ("minimum", "exclusiveMinimum"):
        return f"{shown} is too small (minimum {value})"
    if kind in ("maximum", "exclusiveMaximum"):
        return f"{shown} is too large (maximum {value})"
    if kind in ("minLength", "minItems", "minProperties"):
        return "must not be empty"
    if kind == "const":
        return f"must be {value!r}"
    if kind == "pattern":
        return f"{shown} does not match the pattern {value}"
    return error.message


def _show(value: Any, path: YamlPath, secrets: frozenset[str]) -> str:
    if path and path[-1] in secrets:
        return "(secret value)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(known: Iterable[str]) -> str:
    return f"; allowed keys: {', '.join(sorted(known))}"


class Checker:
    """Semantic checks; the loader calls one method per node it builds."""

    def __init__(self, marks: MarkIndex, issues: list[ConfigIssue],
                 types: Mapping[str, type[Connector]]):
        self.marks = marks
        self.issues = issues
        self.types = types
        self.connectors: dict[str, str] = {}  # declared name → type name (known or not)
        self.connector_settings: dict[str, Any] = {}  # declared name → raw settings
        self.events: dict[str, set[str]] = {}  # name → events it can emit, if its config is sound

    def add(self, path: YamlPath, message: str, hint: str | None = None) -> None:
        self.issues.append(self.marks.issue(path, message, hint))

    def connector_type(self, path: YamlPath, type_name: str) -> type[Connector] | None:
        cls = self.types.get(type_name)
        if cls is None:
            hint = did_you_mean(type_name, self.types)
            known = ", ".join(sorted(self.types)) or "none"
            self.add((*path, "type"), f"unknown connector type '{type_name}'"
                     + ("" if hint else f"; installed types: {known}"), hint)
        return cls

    def _declared(self, path: YamlPath, name: str) -> type[Connector] | None:
        if name not in self.connectors:
            hint = did_you_mean(name, self.connectors)
            self.add(path, f"connector '{name}' is not declared under connectors", hint)
            return None
        return self.types.get(self.connectors[name])

    def event(self, path: YamlPath, connector: str, event: str) -> None:
        self._declared((*path, "connector"), connector)
        known = self.events.get(connector)  # events may depend on the instance's settings
        if known is not None and event not in known:
            self.add((*path, "event"), *_unknown("event", event, connector, known))

    def action(self, path: YamlPath, connector: str, action: str) -> None:
        cls = self._declared(path, connector)
        if cls is not None and action not in cls.actions:
            self.add(path, *_unknown("action", action, connector, cls.actions))

    def mapping_name(self, path: YamlPath, name: str, known: Iterable[str]) -> None:
        known = list(known)
        if name not in known:
            self.add(path, f"mapping '{name}' is not defined (no mappings_dir/{name}.yaml)",
                     did_you_mean(name, known))

    def branches(self, path: YamlPath, raw: list[dict[str, Any]]) -> None:
        """At most one 'otherwise', and last: a branch after it could never run."""
        seen = False
        for i, branch in enumerate(raw):
            if "otherwise" not in branch:
                continue
            if seen:
                self.add((*path, i), "a route has at most one 'otherwise'; merge the two")
            elif i != len(raw) - 1:
                after = len(raw) - 1 - i
                self.add((*path, i), f"'otherwise' must be the last branch: the {after} "
                         f"branch(es) after it are never reached; move it to the end")
            seen = True


    def flow_steps(self, path: YamlPath, flow: Flow, paths: Mapping[int, YamlPath]) -> None:
        """Steps that only make sense in sync (from: {http}) flows, or only in durable ones."""
        sync = isinstance(flow.source, HttpSource)
        for step in _walk(flow.steps):
            at = paths.get(id(step), (*path, "steps"))
            if isinstance(step, ReplyStep) and not sync:
                self.add(at, "reply answers an HTTP request: only flows with from: {http: ...} "
                         "have one; use to: or publish: here")
            if isinstance(step, SplitStep) and sync:
                self.add(at, "split makes new durable messages: a sync flow (from: {http}) cannot "
                         "split; move the split into a flow fed by publish:")
            if isinstance(step, ToStep):
                if step.cache is not None and not sync:
                    self.add((*at, "cache"), "cache applies to sync flows (from: {http}) only; "
                             "remove it")
                if step.compensate is not None and sync:
                    self.add((*at, "compensate"), "compensate needs a durable flow; a sync flow "
                             "(from: {http}) has no saga state: remove it")
                if step.as_ is not None and step.as_.startswith("_saga"):
                    self.add((*at, "as"), f"'{step.as_}' is reserved for saga state; pick "
                             "another name")

    def flow_links(self, flows: Mapping[str, Flow]) -> None:
        """Canary targets exist and share the source; no two sync flows serve one route."""
        targets: dict[str, str] = {}
        for name, flow in flows.items():
            canary = flow.canary
            if canary is None:
                continue
            at = ("flows", name, "canary", "flow")
            other = flows.get(canary.flow)
            if canary.flow == name:
                self.add(at, "a flow cannot be its own canary; name another flow")
            elif other is None:
                self.add(at, f"canary flow '{canary.flow}' is not defined",
                         did_you_mean(canary.flow, flows))
            elif _source_key(other) != _source_key(flow):
                self.add(at, f"canary flow '{canary.flow}' must have the same from: as "
                         f"'{name}'; copy this flow's from: into it")
            elif other.canary is not None:
                self.add(at, f"canary flow '{canary.flow}' has a canary itself; chains are "
                         "not supported")
            elif canary.flow in targets:
                self.add(at, f"'{canary.flow}' is already the canary of flow "
                         f"'{targets[canary.flow]}'; a flow is the canary of one flow at most")
            else:
                targets[canary.flow] = name
        routes: dict[tuple[str, str], str] = {}
        for name, flow in flows.items():
            if not isinstance(flow.source, HttpSource) or name in targets:
                continue
            route = (flow.source.method, flow.source.path)
            if route in routes:
                self.add(("flows", name, "from", "http"), f"flow '{routes[route]}' already "
                         f"serves {' '.join(route)}; change the method or path")
            routes.setdefault(route, name)


def _source_key(flow: Flow) -> tuple[str, ...]:
    src = flow.source
    if isinstance(src, HttpSource):
        return ("http", src.method, src.path)
    if isinstance(src, TopicSource):
        return ("topic", src.topic)
    return ("event", src.connector, src.event)


def _unknown(what: str, name: str, connector: str, known: Iterable[str]) -> tuple[str, Any]:
    hint = did_you_mean(name, known)
    listing = "" if hint else f"; it has: {', '.join(sorted(known)) or 'none'}"
    return f"connector '{connector}' has no {what} '{name}'{listing}", hint


def topic_warnings(flows: Mapping[str, Flow], paths: Mapping[int, YamlPath],
                   marks: MarkIndex) -> list[ConfigIssue]:
    """Topics consumed that no flow publishes, and published that no flow consumes."""
    consumed = {f.source.topic: f for f in flows.values() if isinstance(f.source, TopicSource)}
    published: dict[str, PublishStep] = {}
    for flow in flows.values():
        for step in _walk(flow.steps):
            if isinstance(step, PublishStep):
                published.setdefault(step.topic, step)
    out = []
    for topic, flow in consumed.items():
        if topic not in published and id(flow.source) in paths:
            out.append(marks.issue(paths[id(flow.source)], f"no flow publishes topic "
                                   f"'{topic}', so this flow never runs",
                                   did_you_mean(topic, published)))
    for topic, step in published.items():
        if topic not in consumed and id(step) in paths:
            out.append(marks.issue(paths[id(step)], f"no flow consumes topic '{topic}' "
                                   "(from: {topic: ...}); published messages go nowhere",
                                   did_you_mean(topic, consumed)))
    return out


def _walk(steps: Iterable[Step]) -> Iterable[Step]:
    for step in steps:
        yield step
        if isinstance(step, RouteStep):
            for branch in step.branches:
                yield from _walk(branch.steps)


__all__ = ["Checker", "schema_issues", "topic_warnings"]
