"""Judging one test: its expectations (``then:``) against what the run observed.

Also the static check of a test file against the loaded flows (unknown connectors, actions,
flows, events): those are malformed tests, reported with file:line before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.config.model import Config
from bus.config.suggest import did_you_mean
from bus.config.yamlload import MarkIndex, YamlPath, format_path
from bus.errors import ConfigIssue
from bus.flowtest.mocks import Call
from bus.flowtest.model import CallExpect, Case, TestFile
from bus.flowtest.report import Failure, diff, field_path, show
from bus.transport.base import DeadLetter
from connectors.base import Connector


@dataclass
class Observed:
    """What happened during one test run."""

    calls: list[Call] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    roots: list[tuple[str, str]] = field(default_factory=list)  # (flow, state) per input message
    unrouted: bool = False
    published: list[tuple[str, Any]] = field(default_factory=list)  # (topic, body)
    reply: tuple[int, Any, dict[str, str]] | None = None
    dead: list[DeadLetter] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    input_error: str | None = None


class Judge:
    def __init__(self, case: Case, marks: MarkIndex, seen: Observed):
        self.case, self.marks, self.seen = case, marks, seen
        self.out: list[Failure] = []
        self._pos = 0  # calls are matched in order: the next expectation looks from here

    def fail(self, at: YamlPath, what: str, message: str) -> None:
        self.out.append(Failure(self.marks.loc(at), what, message))

    def name(self, at: YamlPath, extra: str = "") -> str:
        text = format_path(at[2:])
        return f"{text} {extra}".strip()

    def run(self) -> list[Failure]:
        c, then = self.case, self.case.then
        if self.seen.input_error:
            self.fail((*c.when.path, "body"), "when", self.seen.input_error)
        for text in self.seen.stuck:
            self.fail(c.path, "", text)
        quiet = {t for t, _ in then.no_calls}
        for target, text in self.seen.problems:
            if target not in quiet and target.split(".")[0] not in quiet:
                self.fail((*c.path, "given", target), "given", text)
        for exp in then.calls:
            self.call(exp)
        self.no_calls()
        for target, n, at in then.attempts:
            got = sum(1 for x in self.seen.calls if x.target == target)
            if got != n:
                self.fail(at, self.name(at), f"expected {n} calls, got {got}")
        self.states()
        self.published()
        self.reply()
        self.dead_letter()
        return self.out

    def call(self, exp: CallExpect) -> None:
        calls, what = self.seen.calls, self.name(exp.path, exp.target)
        start = self._pos
        cands = [i for i in range(start, len(calls)) if calls[i].target == exp.target
                 and (exp.attempt is None or calls[i].attempt == exp.attempt)]
        if exp.payload is None:
            match = cands[0] if cands else None
        else:
            match = next((i for i in cands
                          if not diff(exp.payload, calls[i].payload, exact=exp.exact)), None)
        if match is not None:
            self._pos = match + 1
            return
        if not cands:
            earlier = any(x.target == exp.target for x in calls[:start])
            made = ", ".join(x.target for x in calls) or "none"
            self.fail(exp.path, what, "no such call" + (
                " after the previous expected call (calls are matched in order)" if earlier else "")
                + f"; calls made: {made}")
            return
        first = calls[cands[0]]
        for sub, text in diff(exp.payload, first.payload, exact=exp.exact):
            self.fail((*exp.path, exp.target, *sub), what, f"{field_path('payload', sub)} {text}")
        self._pos = cands[0] + 1

    def no_calls(self) -> None:
        for target, at in self.case.then.no_calls:
            hits = [x for x in self.seen.calls
                    if x.target == target or ("." not in target and x.connector == target)]
            if hits:
                self.fail(at, self.name(at, target), f"expected no call, got {len(hits)}; first "
                          f"with payload {show(hits[0].payload)}")

    def states(self) -> None:
        then, seen = self.case.then, self.seen
        at = (*then.path, "state")
        actual = [("", "unrouted")] if seen.unrouted else seen.roots
        errors = {d.flow: d.error for d in seen.dead}
        if then.state is None:
            if then.dead_letter is None:
                for d in seen.dead:
                    self.fail(then.path, "then", f"message of flow '{d.flow}' was dead-lettered at "
                              f"{d.step}: {d.error} (expect it with state: dead or dead_letter:)")
            return
        wanted = then.state if isinstance(then.state, dict) else {None: then.state}
        for flow, state in wanted.items():
            mine = [s for f, s in actual if flow is None or f == flow]
            where = at if flow is None else (*at, flow)
            if not mine:
                self.fail(where, self.name(where), f"expected {state}, but flow '{flow}' got no "
                          "message (no subscription, or its when: said no)")
            for f, s in ([(f, s) for f, s in actual if flow is None or f == flow]):
                if s != state:
                    why = f": {errors[f]}" if s == "dead" and f in errors else ""
                    label = f" (flow '{f}')" if f else ""
                    self.fail(where, self.name(where), f"expected {state}, got {s}{label}{why}")

    def published(self) -> None:
        for want, at in self.case.then.published:
            topic = want.get("topic")
            same = [b for t, b in self.seen.published if t == topic]
            if not same:
                topics = sorted({t for t, _ in self.seen.published}) or ["none"]
                self.fail(at, self.name(at), f"nothing published on topic {topic!r} (published "
                          f"on: {', '.join(topics)})")
                continue
            if "body" not in want or any(not diff(want["body"], b, exact=want.get("exact") is True)
                                         for b in same):
                continue
            for sub, text in diff(want["body"], same[0], exact=want.get("exact") is True):
                self.fail((*at, "body", *sub), self.name(at), f"{field_path('body', sub)} {text}")

    def reply(self) -> None:
        want = self.case.then.reply
        if want is None or self.seen.reply is None:
            return
        at = (*self.case.then.path, "reply")
        status, body, headers = self.seen.reply
        if "status" in want and want["status"] != status:
            self.fail((*at, "status"), self.name(at), f"status expected {want['status']}, got "
                      f"{status} (body {show(body)})")
        if "body" in want:
            for sub, text in diff(want["body"], body, exact=want.get("exact") is True):
                self.fail((*at, "body", *sub), self.name(at), f"{field_path('body', sub)} {text}")
        lower = {k.lower(): v for k, v in headers.items()}
        for k, v in (want.get("headers") or {}).items():
            if lower.get(str(k).lower()) != str(v):
                self.fail((*at, "headers", k), self.name(at), f"header {k} expected {show(str(v))}, "
                          f"got {show(lower.get(str(k).lower()))}")

    def dead_letter(self) -> None:
        want = self.case.then.dead_letter
        if want is None:
            return
        at = (*self.case.then.path, "dead_letter")
        found = [d for d in self.seen.dead if want.get("flow") in (None, d.flow)]
        if not found:
            self.fail(at, self.name(at), "expected a dead letter, none was made")
            return
        for key, text_of in (("error_contains", lambda d: "\n".join([d.error, *d.error_chain])),
                             ("step_contains", lambda d: d.step or "")):
            if key in want and not any(str(want[key]) in text_of(d) for d in found):
                self.fail((*at, key), self.name(at), f"{key.split('_')[0]} does not contain "
                          f"{show(str(want[key]))}: {show(found[0].error if key[0] == 'e' else found[0].step)}")


def judge(case: Case, marks: MarkIndex, seen: Observed) -> list[Failure]:
    return Judge(case, marks, seen).run()


def static_issues(tf: TestFile, config: Config, types: dict[str, type[Connector]]) -> list[ConfigIssue]:
    """Names in the test file that the flows do not have: fix the test before running it."""
    issues: list[ConfigIssue] = []
    marks = tf.marks

    def target(name: str, at: YamlPath, *, connector_only: bool = False, key: bool = False) -> None:
        conn, _, action = name.partition(".")
        cc = config.connectors.get(conn)
        if cc is None:
            issues.append(marks.issue(at, f"no connector '{conn}' in {config.source.name}",
                                      did_you_mean(conn, config.connectors), at_key=key))
        elif action or not connector_only:
            actions = types[cc.type].actions
            if action not in actions:
                issues.append(marks.issue(at, f"connector '{conn}' (type {cc.type}) has no action "
                                          f"'{action}'", did_you_mean(action, actions), at_key=key))

    for case in tf.cases:
        for name in case.given:
            target(name, (*case.path, "given", name), key=True)
        for exp in case.then.calls:
            target(exp.target, exp.path)
        for name, at in case.then.no_calls:
            target(name, at, connector_only=True)
        for name, _, at in case.then.attempts:
            target(name, at)
        w = case.when
        if w.kind == "event":
            cc = config.connectors.get(w.connector)
            if cc is None:
                issues.append(marks.issue((*w.path, "event"), f"no connector '{w.connector}' in "
                                          f"{config.source.name}", did_you_mean(w.connector, config.connectors)))
            elif w.name not in (names := types[cc.type].event_names_for(cc.settings)):
                issues.append(marks.issue((*w.path, "event", "name"), f"connector '{w.connector}' "
                                          f"(type {cc.type}) has no event '{w.name}'", did_you_mean(w.name, names)))
        elif w.kind == "flow" and w.name not in config.flows:
            issues.append(marks.issue((*w.path, "flow"), f"no flow '{w.name}' in {config.source.name}",
                                      did_you_mean(w.name, config.flows)))
        if w.kind == "http" and case.then.state is not None:
            issues.append(marks.issue((*case.then.path, "state"), "state: is for event, flow and "
                                      "topic inputs; a sync (http) flow is checked with reply:"))
        if w.kind != "http" and case.then.reply is not None:
            issues.append(marks.issue((*case.then.path, "reply"), "reply: is for http inputs"))
    return issues
