"""``tieline graph``: the flows as a Mermaid diagram, so a reviewer can see the wiring."""

from __future__ import annotations

import re

from bus.config.model import (
    Config,
    EventSource,
    HttpSource,
    PublishStep,
    RouteStep,
    Step,
    TopicSource,
    ToStep,
)


def _id(*parts: str) -> str:
    return "_".join(re.sub(r"\W", "_", p) for p in parts)


def _targets(steps: tuple[Step, ...]) -> list[Step]:
    """Every to:/publish step, route branches included, in order."""
    found: list[Step] = []
    for step in steps:
        if isinstance(step, RouteStep):
            for branch in step.branches:
                found += _targets(branch.steps)
        elif isinstance(step, ToStep | PublishStep):
            found.append(step)
        else:
            found += _targets(getattr(step, "steps", ()) or ())
    return found


def mermaid(config: Config) -> str:
    """A ``flowchart LR``: connectors and topics as nodes, flows as boxes, steps as edges."""
    lines = ["flowchart LR"]
    for name, conn in sorted(config.connectors.items()):
        lines.append(f'  {_id("c", name)}[["{name} ({conn.type})"]]')
    topics: set[str] = set()
    for name, flow in sorted(config.flows.items()):
        fid = _id("f", name)
        label = name if flow.enabled else f"{name} (disabled)"
        lines.append(f'  {fid}("{label}")')
        src = flow.source
        if isinstance(src, EventSource):
            lines.append(f'  {_id("c", src.connector)} -- "{src.event}" --> {fid}')
        elif isinstance(src, TopicSource):
            topics.add(src.topic)
            lines.append(f'  {_id("t", src.topic)} --> {fid}')
        elif isinstance(src, HttpSource):
            hid = _id("h", name)
            lines.append(f'  {hid}>"{src.method} {src.path}"] --> {fid}')
        for step in _targets(flow.steps):
            if isinstance(step, ToStep):
                lines.append(f'  {fid} -- "{step.action}" --> {_id("c", step.connector)}')
            else:
                topics.add(step.topic)
                delay = f" after {step.delay:g}s" if step.delay else ""
                lines.append(f'  {fid} -. "publish{delay}" .-> {_id("t", step.topic)}')
    for topic in sorted(topics):
        lines.append(f'  {_id("t", topic)}{{{{"{topic}"}}}}')
    return "\n".join(lines) + "\n"
