"""Mock connectors: the same type name, events and actions as the real type, scripted answers.

A mock goes through :meth:`Connector.call`'s contract: the payload is checked against the real
action's input schema first (a mapping that builds an invalid payload fails the test with the
schema's message), then the next scripted answer for ``connector.action`` is played. Every
call is recorded; an unscripted call and a schema violation are also recorded as problems,
which fail the test whatever it expects.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bus.config.model import Config
from bus.flowtest.model import Answer
from connectors.base import (
    CallContext,
    Connector,
    PermanentError,
    RetryableError,
    classify_http_status,
)


@dataclass(frozen=True, slots=True)
class Call:
    """One call a flow made: which action, with what payload, on which attempt."""

    connector: str
    action: str
    payload: Any
    attempt: int
    flow: str
    step: str
    message_id: str
    outcome: str = ""  # reply | fail: <error> | unexpected | invalid

    @property
    def target(self) -> str:
        return f"{self.connector}.{self.action}"


@dataclass
class CallLog:
    """What the mocks saw during one test (shared by every mock of that test)."""

    calls: list[Call] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (target, what went wrong)


class Script:
    """The scripted answers of one test: each call takes the next; the last one repeats."""

    def __init__(self, given: Mapping[str, tuple[Answer, ...]]):
        self._answers = {k: list(v) for k, v in given.items()}
        self._used: dict[str, int] = {}

    def next(self, target: str) -> Answer | None:
        answers = self._answers.get(target)
        if not answers:
            return None
        n = self._used.get(target, 0)
        self._used[target] = n + 1
        return answers[min(n, len(answers) - 1)]


def play(answer: Answer, target: str) -> Any:
    """Return the scripted reply or raise the scripted failure, classified like a real connector."""
    if answer.fail is None:
        return copy.deepcopy(answer.reply)
    note = answer.message or f"scripted failure of {target}"
    if isinstance(answer.fail, int):
        text = answer.body if isinstance(answer.body, str) else (
            orjson.dumps(answer.body).decode() if answer.body is not None else note)
        retry_after = None if answer.retry_after is None else f"{answer.retry_after:g}"
        raise classify_http_status(answer.fail, retry_after, text)
    if answer.fail == "permanent":
        raise PermanentError(note)
    what = {"timeout": "timed out", "connection_refused": "connection refused",
            "retryable": "failed (retryable)"}[answer.fail]
    raise RetryableError(f"{target} {what} ({note})", retry_after=answer.retry_after)


class MockConnector(Connector):
    """Base of the generated mock types; see :func:`mock_type`."""

    type_name = "mock"
    real: type[Connector] = Connector

    def __init__(self, name: str, settings: Mapping[str, Any], script: Script, log: CallLog):
        super().__init__(name, settings)
        self.settings = settings
        self.script = script
        self.log = log

    def event_names(self) -> set[str]:
        return self.real.event_names_for(self.settings)

    async def call(self, action_name: str, payload: Any, ctx: CallContext) -> Any:
        spec = self.actions.get(action_name)
        if spec is None:  # the loader checks names, so only a replayed old message gets here
            raise PermanentError(f"connector {self.name!r} has no action {action_name!r}")
        target = f"{self.name}.{action_name}"

        def record(outcome: str) -> None:
            self.log.calls.append(Call(self.name, action_name, copy.deepcopy(payload), ctx.attempt,
                                       ctx.flow, ctx.step, ctx.message_id, outcome))

        try:
            self.check_input(spec, payload)
        except PermanentError as exc:
            record("invalid")
            self.log.problems.append((target, f"{ctx.flow} {ctx.step}: the payload breaks the input schema "
                                     f"of {self.real.type_name}.{action_name}: {exc} (payload "
                                     f"{_short(payload)})"))
            raise
        answer = self.script.next(target)
        if answer is None:
            record("unexpected")
            self.log.problems.append((target, f"{ctx.flow} {ctx.step}: unexpected call to {target} "
                                      f"with payload {_short(payload)}; script it under given:"))
            raise PermanentError(f"flow test: no answer scripted for {target}")
        try:
            result = play(answer, target)
        except (RetryableError, PermanentError) as exc:
            record(f"fail: {exc}")
            raise
        record("reply")
        return result


def mock_type(real: type[Connector]) -> type[MockConnector]:
    """A MockConnector subclass that declares exactly what ``real`` declares."""
    return type(f"Mock{real.__name__}", (MockConnector,), {
        "__module__": __name__, "real": real, "type_name": real.type_name,
        "events": real.events, "actions": dict(real.actions),
    })


def build_mocks(config: Config, types: Mapping[str, type[Connector]], script: Script,
                log: CallLog) -> dict[str, Connector]:
    """One mock per configured connector, of a mock type made once per real type."""
    made: dict[str, type[MockConnector]] = {}
    out: dict[str, Connector] = {}
    for name, cc in config.connectors.items():
        cls = made.get(cc.type) or made.setdefault(cc.type, mock_type(types[cc.type]))
        out[name] = cls(name, cc.settings, script, log)
    return out


def _short(value: Any, limit: int = 300) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return text if len(text) <= limit else text[:limit] + "…"
