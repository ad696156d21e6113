"""Flow test files (``*.test.yaml``) → a typed model, or a ConfigError listing every issue.

A test file holds ``tests:``; each test has ``given`` (the scripted answers of the mocked
connector actions), ``when`` (one input: an event, a flow, an HTTP request or a topic) and
``then`` (expectations). Every part keeps its YAML path so a failed expectation can point at
the exact line that states it (see ``docs/flow-tests.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bus.config.loader import parse_duration
from bus.config.suggest import did_you_mean
from bus.config.yamlload import MarkIndex, YamlPath, read_yaml
from bus.errors import ConfigError, ConfigIssue

DEFAULT_TIMEOUT = 10.0
STATES = ("delivered", "filtered", "dead", "unrouted")
FAULTS = ("timeout", "connection_refused", "retryable", "permanent")
_FILE_KEYS = ("config", "env", "timeout", "tests")
_TEST_KEYS = ("name", "given", "when", "then", "timeout")
_WHEN_KEYS = ("event", "flow", "http", "topic", "body", "body_file")
_THEN_KEYS = ("calls", "no_calls", "attempts", "state", "published", "reply", "dead_letter")
_ANSWER_KEYS = ("reply", "fail", "body", "retry_after", "message")
_CALL_OPTIONS = ("exact", "attempt")


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted answer of a mocked action: a reply, or a failure (``fail``)."""

    path: YamlPath
    reply: Any = None
    fail: int | str | None = None  # HTTP status, or one of FAULTS
    body: Any = None  # with fail: the vendor's error body
    retry_after: float | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Input:
    """``when:``: exactly one of event / flow / http / topic, with its body."""

    kind: str  # event | flow | http | topic
    path: YamlPath
    body: Any = None
    connector: str = ""  # event
    name: str = ""  # event name, flow name or topic
    dedupe_key: str | None = None  # event
    method: str = "GET"  # http
    url_path: str = ""  # http
    query: dict[str, Any] = field(default_factory=dict)  # http
    headers: dict[str, str] = field(default_factory=dict)  # http


@dataclass(frozen=True, slots=True)
class CallExpect:
    path: YamlPath  # of the item; the payload's own path is (*path, target)
    target: str  # 'connector.action'
    payload: Any = None  # None: any payload
    exact: bool = False
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Expect:
    path: YamlPath  # tests[i].then
    calls: tuple[CallExpect, ...] = ()
    no_calls: tuple[tuple[str, YamlPath], ...] = ()  # 'connector' or 'connector.action'
    attempts: tuple[tuple[str, int, YamlPath], ...] = ()
    state: str | dict[str, str] | None = None  # one state for every root message, or per flow
    published: tuple[tuple[dict[str, Any], YamlPath], ...] = ()  # {topic, body?, exact?}
    reply: dict[str, Any] | None = None  # {status?, body?, headers?, exact?}
    dead_letter: dict[str, Any] | None = None  # {error_contains?, flow?, step_contains?}


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    path: YamlPath  # ('tests', i)
    given: dict[str, tuple[Answer, ...]]  # 'connector.action' → answers, in order
    when: Input
    then: Expect
    timeout: float


@dataclass(frozen=True, slots=True)
class TestFile:
    path: Path
    marks: MarkIndex
    config: Path | None  # from 'config:', resolved against the file's directory
    env: dict[str, str]
    cases: tuple[Case, ...]


class _Parser:
    def __init__(self, path: Path, marks: MarkIndex, issues: list[ConfigIssue]):
        self.path, self.marks, self.issues = path, marks, issues

    def bad(self, at: YamlPath, message: str, hint: str | None = None, *, key: bool = False) -> None:
        self.issues.append(self.marks.issue(at, message, hint, at_key=key))

    def keys(self, raw: dict[str, Any], at: YamlPath, known: tuple[str, ...]) -> None:
        for k in raw:
            if k not in known:
                self.bad((*at, k), f"unknown key '{k}'; expected one of {', '.join(known)}",
                         did_you_mean(k, known), key=True)

    def mapping(self, raw: Any, at: YamlPath, what: str) -> dict[str, Any] | None:
        if isinstance(raw, dict):
            return raw
        self.bad(at, f"{what} must be a mapping, got {_kind(raw)}")
        return None

    def file(self, raw: Any) -> TestFile | None:
        top = self.mapping(raw, (), "a flow test file")
        if top is None:
            return None
        self.keys(top, (), _FILE_KEYS)
        config = None
        if "config" in top:
            if isinstance(top["config"], str) and top["config"]:
                config = (self.path.parent / top["config"]).resolve()
            else:
                self.bad(("config",), "config must be a path to flows.yaml (a string)")
        env = self.mapping(top.get("env", {}), ("env",), "env") or {}
        env = {str(k): str(v) for k, v in env.items()}
        timeout = self.seconds(top.get("timeout", DEFAULT_TIMEOUT), ("timeout",))
        tests = top.get("tests")
        if not isinstance(tests, list) or not tests:
            self.bad(("tests",) if "tests" in top else (), "tests must be a non-empty list")
            return None
        cases = [self.case(t, ("tests", i), timeout) for i, t in enumerate(tests)]
        names: dict[str, int] = {}
        for c in cases:
            if c is not None and c.name in names:
                self.bad((*c.path, "name"), f"test name '{c.name}' is used twice (first by "
                         f"tests[{names[c.name]}]); names must be unique")
            elif c is not None:
                names[c.name] = c.path[1]  # type: ignore[assignment]
        return TestFile(self.path, self.marks, config, env, tuple(c for c in cases if c))

    def seconds(self, raw: Any, at: YamlPath) -> float:
        try:
            value = parse_duration(raw)
            if value > 0 and not isinstance(raw, bool):
                return value
        except (ValueError, TypeError):
            pass
        self.bad(at, f"expected a duration like 10 or '10s', got {raw!r}")
        return DEFAULT_TIMEOUT

    def case(self, raw: Any, at: YamlPath, timeout: float) -> Case | None:
        t = self.mapping(raw, at, "a test")
        if t is None:
            return None
        self.keys(t, at, _TEST_KEYS)
        for need in ("name", "when", "then"):
            if need not in t:
                self.bad(at, f"a test needs '{need}'")
        name = t.get("name")
        if "name" in t and (not isinstance(name, str) or not name.strip()):
            self.bad((*at, "name"), "name must be a non-empty string")
        given = self.given(t.get("given") or {}, (*at, "given"))
        when = self.when(t["when"], (*at, "when")) if "when" in t else None
        then = self.then(t["then"], (*at, "then")) if "then" in t else None
        if "timeout" in t:
            timeout = self.seconds(t["timeout"], (*at, "timeout"))
        if not isinstance(name, str) or when is None or then is None:
            return None
        return Case(name.strip(), at, given, when, then, timeout)

    def given(self, raw: Any, at: YamlPath) -> dict[str, tuple[Answer, ...]]:
        out: dict[str, tuple[Answer, ...]] = {}
        for target, script in (self.mapping(raw, at, "given") or {}).items():
            where = (*at, target)
            if not _is_target(target):
                self.bad(where, f"'{target}' is not 'connector.action'", key=True)
                continue
            items = script if isinstance(script, list) else [script]
            if not items:
                self.bad(where, "give at least one answer: {reply: ...} or {fail: ...}")
            paths = [(*where, i) for i in range(len(items))] if isinstance(script, list) else [where]
            answers = [self.answer(item, p) for item, p in zip(items, paths, strict=True)]
            out[target] = tuple(a for a in answers if a is not None)
        return out

    def answer(self, raw: Any, at: YamlPath) -> Answer | None:
        a = self.mapping(raw, at, "an answer")
        if a is None:
            return None
        self.keys(a, at, _ANSWER_KEYS)
        if ("reply" in a) == ("fail" in a):
            self.bad(at, "an answer has exactly one of 'reply' or 'fail'")
            return None
        fail = a.get("fail")
        if "fail" in a and not ((isinstance(fail, int) and not isinstance(fail, bool)
                                 and 400 <= fail <= 599) or fail in FAULTS):
            self.bad((*at, "fail"), f"fail must be an HTTP status 400-599 or one of "
                     f"{', '.join(FAULTS)}; got {fail!r}")
            return None
        retry_after = a.get("retry_after")
        if retry_after is not None:
            retry_after = self.seconds(retry_after, (*at, "retry_after"))
        return Answer(at, a.get("reply"), fail, a.get("body"), retry_after, a.get("message"))

    def when(self, raw: Any, at: YamlPath) -> Input | None:
        w = self.mapping(raw, at, "when")
        if w is None:
            return None
        self.keys(w, at, _WHEN_KEYS)
        kinds = [k for k in ("event", "flow", "http", "topic") if k in w]
        if len(kinds) != 1:
            self.bad(at, "when needs exactly one input: event, flow, http or topic")
            return None
        if "body" in w and "body_file" in w:
            self.bad((*at, "body_file"), "give either body or body_file, not both", key=True)
        body = w.get("body")
        if "body_file" in w:
            body = self.body_file(w["body_file"], (*at, "body_file"))
        kind = kinds[0]
        spec = w[kind]
        if kind in ("flow", "topic"):
            if not isinstance(spec, str) or not spec:
                self.bad((*at, kind), f"{kind} must be a name")
                return None
            return Input(kind, at, body, name=spec)
        spec = self.mapping(spec, (*at, kind), kind)
        if spec is None:
            return None
        if kind == "event":
            self.keys(spec, (*at, kind), ("connector", "name", "dedupe_key"))
            if not isinstance(spec.get("connector"), str) or not isinstance(spec.get("name"), str):
                self.bad((*at, kind), "event needs connector and name, e.g. "
                         "{connector: callcenter, name: call.completed}")
                return None
            return Input(kind, at, body, connector=spec["connector"], name=spec["name"],
                         dedupe_key=spec.get("dedupe_key"))
        self.keys(spec, (*at, kind), ("method", "path", "query", "headers"))
        if not isinstance(spec.get("path"), str) or not spec["path"].startswith("/"):
            self.bad((*at, kind), "http needs a path starting with '/', e.g. {method: GET, path: /api/x}")
            return None
        return Input(kind, at, body, method=str(spec.get("method", "GET")).upper(),
                     url_path=spec["path"], query=dict(spec.get("query") or {}),
                     headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()})

    def body_file(self, raw: Any, at: YamlPath) -> Any:
        file = self.path.parent / str(raw)
        try:
            return orjson.loads(file.read_bytes())
        except OSError as exc:
            self.bad(at, f"cannot read {file}: {exc.strerror}; paths are relative to the test file")
        except orjson.JSONDecodeError as exc:
            self.bad(at, f"{file} is not JSON: {exc}")
        return None

    def then(self, raw: Any, at: YamlPath) -> Expect | None:
        t = self.mapping(raw, at, "then")
        if t is None:
            return None
        self.keys(t, at, _THEN_KEYS)
        calls = [self.call(c, (*at, "calls", i)) for i, c in enumerate(self.list(t, "calls", at))]
        no_calls = []
        for i, target in enumerate(self.list(t, "no_calls", at)):
            if not isinstance(target, str) or not target:
                self.bad((*at, "no_calls", i), "expected 'connector' or 'connector.action'")
            else:
                no_calls.append((target, (*at, "no_calls", i)))
        attempts = []
        for target, n in (self.mapping(t.get("attempts", {}), (*at, "attempts"), "attempts") or {}).items():
            if not _is_target(target) or not isinstance(n, int) or isinstance(n, bool) or n < 0:
                self.bad((*at, "attempts", target), "expected 'connector.action: <count>'")
            else:
                attempts.append((target, n, (*at, "attempts", target)))
        state = t.get("state")
        if state is not None and not self.state_ok(state, (*at, "state")):
            state = None
        published = []
        for i, p in enumerate(self.list(t, "published", at)):
            p = self.mapping(p, (*at, "published", i), "a published event")
            if p is not None:
                self.keys(p, (*at, "published", i), ("topic", "body", "exact"))
                published.append((p, (*at, "published", i)))
        reply = dead = None
        if "reply" in t:
            reply = self.mapping(t["reply"], (*at, "reply"), "reply")
            if reply is not None:
                self.keys(reply, (*at, "reply"), ("status", "body", "headers", "exact"))
        if "dead_letter" in t:
            dead = self.mapping(t["dead_letter"], (*at, "dead_letter"), "dead_letter")
            if dead is not None:
                self.keys(dead, (*at, "dead_letter"), ("error_contains", "flow", "step_contains"))
        return Expect(at, tuple(c for c in calls if c), tuple(no_calls), tuple(attempts), state,
                      tuple(published), reply, dead)

    def list(self, t: dict[str, Any], key: str, at: YamlPath) -> list[Any]:
        value = t.get(key, [])
        if isinstance(value, list):
            return value
        self.bad((*at, key), f"{key} must be a list")
        return []

    def state_ok(self, state: Any, at: YamlPath) -> bool:
        values = state.items() if isinstance(state, dict) else [(None, state)]
        ok = True
        for flow, value in values:
            if value not in STATES:
                where = at if flow is None else (*at, flow)
                self.bad(where, f"state must be one of {', '.join(STATES)} (or a mapping flow → "
                         f"state); got {value!r}", did_you_mean(str(value), STATES))
                ok = False
        return ok

    def call(self, raw: Any, at: YamlPath) -> CallExpect | None:
        if isinstance(raw, str) and _is_target(raw):
            return CallExpect(at, raw)
        c = self.mapping(raw, at, "a call expectation")
        if c is None:
            return None
        targets = [k for k in c if k not in _CALL_OPTIONS]
        if len(targets) != 1 or not _is_target(targets[0]):
            self.bad(at, "a call expectation is {connector.action: payload} (plus optional "
                     "exact: true, attempt: N)")
            return None
        attempt = c.get("attempt")
        if attempt is not None and (not isinstance(attempt, int) or attempt < 1):
            self.bad((*at, "attempt"), "attempt must be a number from 1")
            attempt = None
        return CallExpect(at, targets[0], c[targets[0]], c.get("exact") is True, attempt)


def _is_target(text: Any) -> bool:
    return isinstance(text, str) and text.count(".") == 1 and all(text.split("."))


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)


def load_test_file(path: str | Path, display: str | None = None) -> TestFile:
    """Parse one test file; ConfigError lists every problem with file:line:col."""
    path = Path(path)
    issues: list[ConfigIssue] = []
    data, marks = read_yaml(path, issues, display)
    parsed = _Parser(path, marks, issues).file(data) if not issues else None
    if issues or parsed is None:
        if not issues:
            issues.append(ConfigIssue(marks.file, 1, 1, "", "the file is empty; add tests:"))
        raise ConfigError(issues)
    return parsed
