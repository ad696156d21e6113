"""``tieline plan``: what a reload would change against the running bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.config.model import Config, EventSource, HttpSource, TopicSource


def describe_source(flow: Any) -> str:
    src = flow.source
    if isinstance(src, EventSource):
        return f"event {src.connector}.{src.event}"
    if isinstance(src, TopicSource):
        return f"topic {src.topic}"
    if isinstance(src, HttpSource):
        return f"route {src.method} {src.path}"
    return "?"


@dataclass
class Plan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    queues_created: list[str] = field(default_factory=list)
    queues_retired: list[str] = field(default_factory=list)
    routes_created: list[str] = field(default_factory=list)
    routes_retired: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.__dict__.items()}

    def lines(self) -> list[str]:
        out = []
        for sign, names in (("+", self.added), ("-", self.removed), ("~", self.changed)):
            out += [f"{sign} flow {n}" for n in names]
        out += [f"+ queue {q}" for q in self.queues_created]
        out += [f"- queue {q}" for q in self.queues_retired]
        out += [f"+ {r}" for r in self.routes_created]
        out += [f"- {r}" for r in self.routes_retired]
        return out or ["no changes"]


def plan(running: list[dict[str, Any]], new: Config) -> Plan:
    """Compare the running flows (name, version, source as the API lists them) with ``new``."""
    old = {f["name"]: f for f in running}
    p = Plan()
    for name, flow in sorted(new.flows.items()):
        if name not in old:
            p.added.append(name)
            p.queues_created.append(f"flow.{name}")
        elif old[name].get("version") != flow.version:
            p.changed.append(name)
        else:
            p.unchanged.append(name)
        if isinstance(flow.source, HttpSource):
            route = describe_source(flow)
            if name not in old or old[name].get("from") != route:
                p.routes_created.append(route)
    for name in sorted(set(old) - set(new.flows)):
        p.removed.append(name)
        p.queues_retired.append(f"flow.{name}")
        src = old[name].get("from", "")
        if src.startswith("route "):
            p.routes_retired.append(src)
    return p
