"""flows.yaml + mappings/ → the typed :class:`Config`, or a ConfigError listing every issue.

The pipeline: read YAML with marks → interpolate ``${VAR}`` → coerce env strings to the
types the schema wants → JSON Schema → load and compile mappings → build the model, running
the semantic checks on every part the schema found sound. A part with schema errors (a
connector, a flow's header, one step) is skipped so the rest is still checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from bus import mapping as mapping_mod
from bus.config import model as m
from bus.config.checks import Checker, schema_issues, topic_warnings
from bus.config.interpolate import coerce, interpolate
from bus.config.model import Config
from bus.config.yamlload import MarkIndex, YamlPath, format_path, read_yaml
from bus.errors import ConfigError, ConfigIssue
from connectors.base import Connector

SCHEMA: dict[str, Any] = json.loads(
    resources.files("bus.config").joinpath("flows.schema.json").read_text(encoding="utf-8"))
_AMOUNT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|sec|m|min|h|hour)\s*")
_PER = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
_SECONDS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"": 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
          "GB": 1000**3, "GiB": 1024**3}


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string like ``500ms``, ``30s``, ``5m``, ``2h``, ``7d``."""
    return _amount(value, _SECONDS)


def parse_rate(value: str) -> float:
    """Calls per second from a string like ``700/min``, ``10/s``, ``5000/h``."""
    match = _RATE.fullmatch(value)
    if not match:  # the schema has checked this already
        raise ValueError(f"not a rate: {value!r}")
    return float(match.group(1)) / _PER[match.group(2)]


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a string like ``512KB``, ``256KiB``, ``1MiB``."""
    return int(round(_amount(value, _BYTES)))


def _amount(value: float | str, units: Mapping[str, float]) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = _AMOUNT.fullmatch(value)
    if not match or match.group(2) not in units:  # the schema has checked this already
        raise ValueError(f"not an amount: {value!r}")
    return float(match.group(1)) * units[match.group(2)]


def load_config(path: str | Path, *, connector_types: Mapping[str, type[Connector]],
                env: Mapping[str, str] | None = None,
                warnings: list[ConfigIssue] | None = None) -> Config:
    """Load and check ``path`` (flows.yaml) and its mappings; ConfigError lists every issue.

    ``warnings`` (if given) receives issues that do not stop loading, e.g. unused topics.
    """
    source = Path(path)
    issues: list[ConfigIssue] = []
    data, marks = read_yaml(source, issues)
    if data is None and issues:  # unreadable or not YAML: nothing more to check
        raise ConfigError(issues)
    data, touched, failed = interpolate(data, marks, os.environ if env is None else env, issues)
    valid = coerce(data, SCHEMA, touched)
    broken = []
    found = [] if valid else schema_issues(data, SCHEMA, marks, secrets=SECURITY_SECRETS)
    for bad_path, issue in found:
        broken.append(bad_path)
        if bad_path not in failed:  # an unset ${VAR} is reported once, not again as a bad value
            issues.append(issue)
    if not isinstance(data, dict):
        raise ConfigError(issues)
    builder = _Builder(source, data, marks, issues, broken, connector_types, touched, failed)
    config = builder.build()
    if issues:
        raise ConfigError(issues)
    if warnings is not None:
        warnings.extend(topic_warnings(config.flows, builder.paths, marks))
    return config


class _Builder:
    def __init__(self, source: Path, data: dict[str, Any], marks: MarkIndex,
                 issues: list[ConfigIssue], broken: list[YamlPath],
                 types: Mapping[str, type[Connector]], touched: set[YamlPath],
                 failed: set[YamlPath]):
        self.source, self.data, self.marks, self.issues = source, data, marks, issues
        self.broken, self.touched, self.failed = broken, touched, failed
        self.base = source.parent
        self.check = Checker(marks, issues, types)
        self.specs: dict[str, Any] = {}  # named mapping → raw spec (for flow versions)
        self.compiled: dict[str, Any] = {}
        self.paths: dict[int, YamlPath] = {}  # id(model node) → YAML path, for warnings
        self.used: dict[str, Any] = {}  # what the flow being built depends on, besides itself

    def sound(self, path: YamlPath, *, deep: bool = True) -> bool:
        """No schema error at ``path`` (or, with ``deep``, anywhere under it)."""
        n = len(path)
        return not any(p == path or (deep and p[:n] == path) for p in self.broken)

    def build(self) -> m.Config:
        settings = self.settings(self.data.get("settings") or {})
        self.mappings()
        connectors = {}
        for name, raw in self.section("connectors").items():
            if isinstance(raw, dict):  # declared even if broken: no 'not declared' cascade
                self.check.connectors[name] = raw.get("type")
                self.check.connector_settings[name] = raw.get("settings") or {}
            if self.sound(("connectors", name)):
                connectors[name] = self.connector(name, raw)
        flows = {}
        for name, raw in self.section("flows").items():
            flow = self.flow(name, raw) if isinstance(raw, dict) else None
            if flow is not None:
                flows[name] = flow
        self.check.flow_links(flows)
        security = self.data.get("security") if self.sound(("security",)) else None
        return m.Config(settings, connectors, flows, dict(self.compiled), self.source, security)

    def section(self, key: str) -> dict[str, Any]:
        raw = self.data.get(key)
        return raw if isinstance(raw, dict) and self.sound((key,), deep=False) else {}

    # ----- settings, mappings, connectors ---------------------------------------------
    def settings(self, raw: dict[str, Any]) -> m.Settings:
        if not self.sound(("settings",)):
            raw = {}
        http = raw.get("http") or {}
        http_settings = m.HttpSettings(
            host=http.get("host", "127.0.0.1"), port=http.get("port", 8080),
            max_body_bytes=parse_size(http.get("max_body", 256 * 1024)),
            public_url=http.get("public_url"), tls_cert=_resolve(self.base, http.get("tls_cert")),
            tls_key=_resolve(self.base, http.get("tls_key")),
            tls_min_version=str(http.get("tls_min_version", "1.3")),
            rate_limit=self.rate(("settings", "http", "rate_limit"), http["rate_limit"])
            if http.get("rate_limit") else None)
        simple = {k: raw[k] for k in ("transport", "backlog_limit", "sync", "workers", "sandbox",
                                      "amqp_url", "redis_url", "broker_prefix") if k in raw}
        return m.Settings(
            **simple, http=http_settings,
            data_dir=Path(os.path.abspath(self.base / raw.get("data_dir", "data"))),
            dedupe_window=parse_duration(raw.get("dedupe_window", 7 * 86400)),
            retention=parse_duration(raw.get("retention", 7 * 86400)),
            outbound_allow=tuple((raw.get("outbound") or {}).get("allow") or ()),
            follow_redirects=bool((raw.get("outbound") or {}).get("follow_redirects", False)))

    def mappings(self) -> None:
        given = self.data.get("mappings_dir") if self.sound(("mappings_dir",)) else None
        folder = self.base / (given or "mappings")
        if not folder.is_dir():
            if given:
                self.check.add(("mappings_dir",), f"'{folder}' is not a directory; create it "
                               "or fix mappings_dir")
            return
        for file in sorted(folder.glob("*.y*ml")):
            name = file.stem
            if file.suffix not in (".yaml", ".yml") or name.startswith("."):
                continue
            spec, marks = read_yaml(file, self.issues)
            if name in self.specs:
                self.issues.append(marks.issue((), f"mapping '{name}' is defined twice "
                                               "(.yaml and .yml); remove one"))
                continue
            self.specs[name] = spec
            compiled = self.compile_mapping(name, spec, marks, ())
            if compiled is not None:
                self.compiled[name] = compiled

    def compile_mapping(self, name: str, spec: Any, marks: MarkIndex, at: YamlPath) -> Any:
        try:
            return mapping_mod.compile_mapping(name, spec)
        except mapping_mod.MappingSpecError as exc:
            where = (*at, *exc.path)
            at_key = exc.message.startswith("unknown key")  # point at the key, not its value
            self.issues.append(marks.issue(where, exc.message, at_key=at_key))
            return None

    def expression(self, path: YamlPath, source: str) -> str:
        try:
            mapping_mod.compile_expression(source)
        except mapping_mod.MappingSpecError as exc:
            self.check.add(path, exc.message)
        return source

    def connector(self, name: str, raw: dict[str, Any]) -> m.ConnectorConfig:
        path = ("connectors", name)
        settings = raw.get("settings") or {}
        cls = self.check.connector_type(path, raw["type"])
        if cls is not None:
            at = (*path, "settings")
            coerce(settings, cls.config_schema, self.touched, at)
            found = schema_issues(settings, cls.config_schema, self.marks, at, cls.secret_fields)
            self.issues.extend(issue for bad, issue in found if bad not in self.failed)
            if not found:
                self.check.events[name] = set(cls.event_names_for(settings))
        ing = raw.get("ingress")
        rule = None if not ing else m.IngressRule(
            tuple(ing.get("allow_ips") or ()), ing.get("api_key"),
            str(ing.get("api_key_header", "x-api-key")).lower())
        return m.ConnectorConfig(name, raw["type"], settings, self.marks.key_loc(path),
                                 self.rate(path, raw), self.breaker(raw.get("circuit_breaker")), rule)

    def rate(self, path: YamlPath, raw: dict[str, Any]) -> m.Rate | None:
        if "rate" not in raw:
            if "burst" in raw:
                self.check.add((*path, "burst"), "burst needs a rate; add rate: e.g. 10/s")
            return None
        per_second = parse_rate(raw["rate"])
        return m.Rate(per_second, float(raw.get("burst") or max(1.0, per_second)))

    def breaker(self, raw: dict[str, Any] | None) -> m.BreakerPolicy | None:
        if raw is None:
            return None
        given = dict(raw)
        for key in ("window", "cooldown"):
            if key in given:
                given[key] = parse_duration(given[key])
        return m.BreakerPolicy(**given)

    # ----- flows ----------------------------------------------------------------------
    def flow(self, name: str, raw: dict[str, Any]) -> m.Flow | None:
        """The flow, or None if part of it is broken (the sound parts are still checked)."""
        path = ("flows", name)
        self.used = {"mappings": {}, "schemas": {}}
        header_ok = self.sound(path, deep=False) and all(
            self.sound((*path, k)) for k in raw if k != "steps")
        steps_ok = "steps" in raw and self.sound((*path, "steps"), deep=False)
        steps = self.steps((*path, "steps"), raw["steps"]) if steps_ok else ()
        if not header_ok:
            return None
        source = self.source_of((*path, "from"), raw["from"])
        when = raw.get("when")
        if when is not None:
            self.expression((*path, "when"), when)
        if not steps_ok:
            return None
        flow = m.Flow(
            name=name, source=source, steps=steps, when=when,
            retry=self.retry(raw.get("retry") or {}, m.RetryPolicy()),
            dead_letter=m.DeadLetterRule(**(raw.get("dead_letter") or {})),
            concurrency=raw.get("concurrency", 16), enabled=raw.get("enabled", True),
            loc=self.marks.key_loc(path), canary=self.canary((*path, "canary"), raw.get("canary")),
            timeout=parse_duration(raw["timeout"]) if "timeout" in raw else None)
        self.check.flow_steps(path, flow, self.paths)
        return dataclasses.replace(flow, version=self.version(raw))

    def canary(self, path: YamlPath, raw: dict[str, Any] | None) -> m.Canary | None:
        if raw is None:
            return None
        key = self.expression((*path, "key"), raw["key"])
        return m.Canary(raw["flow"], float(raw["percent"]), key, self.marks.loc(path))

    def version(self, raw: dict[str, Any]) -> str:
        # Editing a mapping or schema file the flow uses changes its version too.
        canonical = json.dumps({"flow": raw, **self.used}, sort_keys=True, default=str,
                               separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def source_of(self, path: YamlPath, raw: dict[str, Any]) -> m.Source:
        loc = self.marks.loc(path)
        if "connector" in raw:
            self.check.event(path, raw["connector"], raw["event"])
            src: m.Source = m.EventSource(raw["connector"], raw["event"], loc)
        elif "topic" in raw:
            src = m.TopicSource(raw["topic"], loc)
            self.paths[id(src)] = (*path, "topic")
        else:
            method, _, route = raw["http"].partition(" ")
            src = m.HttpSource(method, route, loc)
        return src

    def retry(self, raw: dict[str, Any], base: m.RetryPolicy) -> m.RetryPolicy:
        given = dict(raw)
        for key in ("initial_delay", "max_delay", "deadline"):
            if given.get(key) is not None:
                given[key] = parse_duration(given[key])
        return dataclasses.replace(base, **given)

    def steps(self, path: YamlPath, raw: list[Any]) -> tuple[m.Step, ...]:
        built = []
        for i, item in enumerate(raw):
            if self.sound((*path, i)):
                built.append(self.step((*path, i), item))
        return tuple(built)

    def step(self, path: YamlPath, raw: dict[str, Any]) -> m.Step:
        loc = self.marks.loc(path)
        if "validate" in raw:
            return m.ValidateStep(self.schema((*path, "validate"), raw["validate"]), loc)
        if "filter" in raw:
            return m.FilterStep(self.expression((*path, "filter"), raw["filter"]), loc)
        if "route" in raw:
            return m.RouteStep(self.branches((*path, "route"), raw["route"]), loc)
        mapping = self.mapping_ref((*path, "map"), raw["map"]) if "map" in raw else None
        if "to" in raw:
            connector, _, action = raw["to"].partition(".")
            self.check.action((*path, "to"), connector, action)
            retry = self.retry(raw["retry"], m.RetryPolicy()) if "retry" in raw else None
            cache = parse_duration(raw["cache"]) if "cache" in raw else None
            undo = self.compensation((*path, "compensate"), raw.get("compensate"))
            step = m.ToStep(connector, action, mapping, raw.get("as"), retry, loc, undo, cache)
            self.paths[id(step)] = path
            return step
        if "publish" in raw:
            delay = parse_duration(raw["delay"]) if "delay" in raw else None
            delay_expr = raw.get("delay_expr")
            if delay_expr is not None:
                self.expression((*path, "delay_expr"), delay_expr)
            once_per = raw.get("once_per")
            if once_per is not None:
                self.expression((*path, "once_per"), once_per)
            step = m.PublishStep(raw["publish"], mapping, delay, loc, delay_expr, once_per)
            self.paths[id(step)] = (*path, "publish")
            return step
        if "reply" in raw:
            step = self.reply((*path, "reply"), raw["reply"], loc)
        elif "split" in raw:
            step = m.SplitStep(self.expression((*path, "split"), raw["split"]), loc)
        if "reply" in raw or "split" in raw:
            self.paths[id(step)] = path
            return step
        assert mapping is not None  # the schema requires one kind per step
        return m.MapStep(mapping, loc)

    def compensation(self, path: YamlPath, raw: dict[str, Any] | None) -> m.Compensation | None:
        if raw is None:
            return None
        connector, _, action = raw["action"].partition(".")
        self.check.action((*path, "action"), connector, action)
        mapping = self.mapping_ref((*path, "map"), raw["map"]) if "map" in raw else None
        return m.Compensation(connector, action, mapping, self.marks.loc(path))

    def reply(self, path: YamlPath, raw: str | dict[str, Any], loc: m.Location) -> m.ReplyStep:
        # {status, map} is the long form; anything else is a mapping (a name or inline spec).
        if isinstance(raw, dict) and raw and set(raw) <= {"status", "map"}:
            status = raw.get("status", 200)
            if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
                self.check.add((*path, "status"), f"status is an HTTP status 100-599, got {status!r}")
                status = 200
            ref = self.mapping_ref((*path, "map"), raw["map"]) if "map" in raw else None
            return m.ReplyStep(status, ref, loc)
        return m.ReplyStep(200, self.mapping_ref(path, raw), loc)

    def branches(self, path: YamlPath, raw: list[dict[str, Any]]) -> tuple[m.Branch, ...]:
        self.check.branches(path, raw)
        out = []
        for i, branch in enumerate(raw):
            at = (*path, i)
            if "otherwise" in branch:
                steps = self.steps((*at, "otherwise"), branch["otherwise"])
                out.append(m.Branch(None, steps, self.marks.loc(at)))
            else:
                when = self.expression((*at, "when"), branch["when"])
                steps = self.steps((*at, "steps"), branch["steps"])
                out.append(m.Branch(when, steps, self.marks.loc(at)))
        return tuple(out)

    def mapping_ref(self, path: YamlPath, raw: str | dict[str, Any]) -> m.MappingRef:
        loc = self.marks.loc(path)
        if isinstance(raw, str):
            self.check.mapping_name(path, raw, self.specs)
            self.used["mappings"][raw] = self.specs.get(raw)
            return m.MappingRef(raw, None, loc)
        name = format_path(path[1:])  # e.g. returns.steps[1].map
        self.compile_mapping(name, raw, self.marks, path)
        return m.MappingRef(name, raw, loc)

    def schema(self, path: YamlPath, raw: str | dict[str, Any]) -> Mapping[str, Any]:
        schema, marks, at = raw, self.marks, path
        if isinstance(raw, str):
            file = self.base / raw
            if file.suffix not in (".json", ".yaml", ".yml"):
                self.check.add(path, f"a schema file ends in .json, .yaml or .yml: '{raw}'")
                return {}
            if not file.is_file():
                self.check.add(path, f"schema file '{file}' does not exist")
                return {}
            (schema, marks), at = self.schema_file(file), ()
            self.used["schemas"][raw] = schema
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            self.issues.append(marks.issue((*at, *exc.path), f"invalid JSON Schema: {exc.message}"))
        return schema if isinstance(schema, dict) else {}

    def schema_file(self, file: Path) -> tuple[Any, MarkIndex]:
        if file.suffix in (".yaml", ".yml"):
            return read_yaml(file, self.issues)
        try:
            return json.loads(file.read_text(encoding="utf-8")), MarkIndex(str(file))
        except (OSError, UnicodeDecodeError) as exc:
            self.issues.append(ConfigIssue(str(file), 1, 1, "", f"cannot read the file: {exc}"))
        except json.JSONDecodeError as exc:
            self.issues.append(ConfigIssue(str(file), exc.lineno, exc.colno, "",
                                           f"invalid JSON: {exc.msg}"))
        return {}, MarkIndex(str(file))


# Values under these keys (security: client secrets, the signing key) never appear in errors.
SECURITY_SECRETS = frozenset({"secret", "key", "secret_hash", "api_key"})


def _resolve(base: Path, value: str | None) -> str | None:
    """A file setting relative to the flows.yaml directory."""
    return None if not value else str((base / value).resolve())
