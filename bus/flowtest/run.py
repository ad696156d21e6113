"""Running flow tests: each test gets a fresh bus (temp SQLite, mock connectors, fast clocks).

The input enters through the front door (the real Ingress, ``admit_to_flow``, the sync-flow
HTTP routes, or a topic publish), the runner processes it as in production, and the test
waits until every message is delivered, filtered or dead before judging what happened.
"""

from __future__ import annotations

import asyncio
import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from bus.config.loader import load_config
from bus.config.model import Config
from bus.envelope import EVENT, SOURCE, Envelope
from bus.errors import ConfigError, ConfigIssue, PayloadError
from bus.flowtest.check import Observed, judge, static_issues
from bus.flowtest.fast import compress
from bus.flowtest.mocks import CallLog, Script, build_mocks
from bus.flowtest.model import Case, Input, TestFile, load_test_file
from bus.flowtest.report import CaseResult
from bus.runner import Topics
from bus.runtime import Runtime
from bus.transport.base import MessageState
from connectors.base import InboundEvent
from connectors.registry import ConnectorRegistry

PATTERNS = ("*.test.yaml", "*.test.yml")
OnResult = Callable[[CaseResult], None]


@dataclass(frozen=True, slots=True)
class Planned:
    """One test file ready to run: its tests (after ``-k``) and the flows they test."""

    file: TestFile
    config: Config
    cases: tuple[Case, ...]


def discover(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every ``*.test.yaml`` below it, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted({f for pattern in PATTERNS for f in p.rglob(pattern)})


def find_config(start: Path) -> Path | None:
    """The nearest ``flows.yaml`` in the test file's directory or above it."""
    for d in [start.resolve().parent, *start.resolve().parents]:
        if (d / "flows.yaml").is_file():
            return d / "flows.yaml"
    return None


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def plan(paths: Sequence[Path], registry: ConnectorRegistry, *, config: str | Path | None = None,
         keyword: str | None = None) -> list[Planned]:
    """Parse and check every test file and the flows it names; ConfigError lists all issues."""
    issues: list[ConfigIssue] = []
    configs: dict[tuple[Path, tuple], Config] = {}
    out = []
    for path in paths:
        try:
            tf = load_test_file(path, display(path))
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        cases = tuple(c for c in tf.cases if not keyword or keyword.lower() in c.name.lower())
        if not cases:
            continue
        source = tf.config or (Path(config) if config else find_config(path))
        if source is None:
            issues.append(ConfigIssue(tf.marks.file, 1, 1, "", "no flows.yaml found in this "
                                      "directory or above; add config: ../flows.yaml or pass --config"))
            continue
        key = (source.resolve(), tuple(sorted(tf.env.items())))
        if key not in configs:
            try:
                configs[key] = load_config(source, connector_types=registry.types,
                                           env={**os.environ, **tf.env})
            except ConfigError as exc:
                issues.extend(exc.issues)
                continue
        issues.extend(static_issues(tf, configs[key], dict(registry.types)))
        out.append(Planned(tf, configs[key], cases))
    if issues:
        raise ConfigError(issues)
    return out


class RecordingTopics(Topics):
    """The runner's topic fan-out, noting every (topic, body) a flow publishes."""

    def __init__(self, flows: Any, sink: list[tuple[str, Any]]):
        super().__init__(flows)
        self.sink = sink

    def children(self, parent: Envelope, topic: str, body: Any) -> list[Envelope]:
        self.sink.append((topic, copy.deepcopy(body)))
        return super().children(parent, topic, body)


def _no_network(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"flow tests make no network calls ({request.url})", request=request)


async def run_case(case: Case, planned: Planned, registry: ConnectorRegistry,
                   http: httpx.AsyncClient) -> CaseResult:
    """One test on its own bus; never raises for a failing flow, only reports.

    ``http`` is the runtime's outbound client; mocks never use it (it refuses every request).
    """
    started = time.monotonic()
    log, seen = CallLog(), Observed()
    with tempfile.TemporaryDirectory(prefix="tieline-flowtest-") as tmp:
        base = planned.config
        cfg = replace(base, security=None, settings=replace(
            base.settings, data_dir=Path(tmp), transport="embedded", sync="normal", sandbox=False))
        mocks = build_mocks(cfg, registry.types, Script(case.given), log)
        runtime = Runtime(cfg, registry, connectors=mocks, http=http)
        runtime.apply(cfg, compress(runtime.flows), runtime.connectors)
        runtime.runner.topics = RecordingTopics(runtime.flows, seen.published)
        await runtime.start()
        try:
            roots = await feed(runtime, case.when, seen)
            await settle(runtime, case.timeout, seen)
            for mid in roots:
                rec = await runtime.transport.message(mid)
                if rec is not None:
                    seen.roots.append((rec.envelope.flow, rec.state.value))
            seen.dead = await runtime.transport.dead_letters(limit=10_000)
        finally:
            await runtime.stop(timeout=1.0)
    seen.calls, seen.problems = log.calls, log.problems
    result = CaseResult(planned.file.marks.file, case.name, judge(case, planned.file.marks, seen),
                        time.monotonic() - started)
    result.calls = [f"{c.target} (attempt {c.attempt}): {c.outcome}" for c in log.calls]
    return result


async def feed(runtime: Runtime, w: Input, seen: Observed) -> list[str]:
    """Send the test's input in; returns the ids of the messages it started."""
    if w.kind == "event":
        event = InboundEvent(w.name, w.body, w.dedupe_key)
        try:
            runtime.ingress.check_event(runtime.connectors[w.connector], event)
        except PayloadError as exc:
            seen.input_error = f"the test's event breaks the connector's event schema: {exc}"
            return []
        admission = await runtime.ingress.admit(w.connector, event)
        seen.unrouted = admission.unrouted
        return list(admission.accepted)
    if w.kind == "flow":
        return [await runtime.ingress.admit_to_flow(w.name, w.body)]
    if w.kind == "topic":
        parent = Envelope.new("flowtest", None, {SOURCE: "flowtest", EVENT: w.name})
        children = Topics(runtime.flows).children(parent, w.name, w.body)
        seen.unrouted = not children
        if children:
            await runtime.transport.publish(children)
        return [c.id for c in children]
    from bus.http.sync_routes import routes

    app = Starlette(routes=routes(runtime))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://flowtest") as client:
        kw: dict[str, Any] = {"json": w.body} if w.body is not None else {}
        r = await client.request(w.method, w.url_path, params=w.query, headers=w.headers, **kw)
    try:
        body = r.json() if r.content else None
    except ValueError:
        body = r.text
    seen.reply = (r.status_code, body, dict(r.headers))
    return []


async def settle(runtime: Runtime, timeout: float, seen: Observed) -> None:
    """Wait until no message is queued or scheduled; on timeout say where each one is stuck."""
    deadline = time.monotonic() + timeout
    while await runtime.transport.backlog() > 0:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    else:
        return
    for rec in await runtime.transport.search(state=MessageState.QUEUED, limit=50):
        history = await runtime.transport.history(rec.envelope.id)
        last = history[-1] if history else None
        where = f"{last.kind} {last.step or ''} {last.outcome or ''} {last.error or ''}".strip() \
            if last else "never started"
        seen.stuck.append(f"timed out after {timeout:g}s: message {rec.envelope.id} of flow "
                          f"'{rec.envelope.flow}' is still queued (attempt {rec.envelope.attempt}, "
                          f"last: {where}); raise timeout: or fix the flow")


async def run_planned(planned: Sequence[Planned], registry: ConnectorRegistry,
                      on_result: OnResult | None = None) -> list[CaseResult]:
    results = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(_no_network)) as http:
        for p in planned:
            for case in p.cases:
                result = await run_case(case, p, registry, http)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def run_tests(path: str | Path = "flowtests", *, config: str | Path | None = None,
              keyword: str | None = None, on_result: OnResult | None = None,
              registry: ConnectorRegistry | None = None) -> list[CaseResult]:
    """Discover, check and run the flow tests under ``path``; ConfigError if any file is malformed."""
    registry = registry or ConnectorRegistry.from_entry_points()
    files = discover(path)
    if not files:
        raise ConfigError([ConfigIssue(str(path), 1, 1, "", "no *.test.yaml files here; "
                                       "write one (see docs/flow-tests.md)")])
    planned = plan(files, registry, config=config, keyword=keyword)
    return asyncio.run(run_planned(planned, registry, on_result))
