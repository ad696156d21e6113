"""Results of flow tests: structural diffs, failure lines that point at the test file, output.

A failure reads ``file:line:col: then.calls[0] tickets.create_ticket: payload.priority expected
'urgent', got 'normal'``; the location is the line of the expected value itself when the
expectation is a mapping, so an editor jumps straight to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.config.model import Location
from bus.config.yamlload import YamlPath, format_path

Diff = tuple[YamlPath, str]  # (path inside the expected value, what differs)
_MISSING = object()


def show(value: Any, limit: int = 120) -> str:
    """A value as a reader expects it in a diff: strings quoted, long ones cut."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str,
                                                                  ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def diff(expected: Any, actual: Any, *, exact: bool = False, at: YamlPath = ()) -> list[Diff]:
    """How ``actual`` differs from ``expected``.

    Mappings match as a subset (keys not named are ignored) unless ``exact``; lists match item
    by item and must have the same length; scalars must be equal (``1 != true``).
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [(at, f"expected a mapping, got {show(actual)}")]
        out: list[Diff] = []
        for key, want in expected.items():
            got = actual.get(key, _MISSING)
            if got is _MISSING:
                out.append(((*at, key), f"expected {show(want)}, missing"))
            else:
                out.extend(diff(want, got, exact=exact, at=(*at, key)))
        if exact:
            out.extend(((*at, k), f"not expected, got {show(v)}")
                       for k, v in actual.items() if k not in expected)
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [(at, f"expected a list, got {show(actual)}")]
        if len(expected) != len(actual):
            return [(at, f"expected {len(expected)} items, got {len(actual)}: {show(actual)}")]
        out = []
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            out.extend(diff(want, got, exact=exact, at=(*at, i)))
        return out
    if type(expected) is bool or type(actual) is bool:
        same = type(expected) is type(actual) and expected == actual
    else:
        same = expected == actual
    return [] if same else [(at, f"expected {show(expected)}, got {show(actual)}")]


def field_path(prefix: str, at: YamlPath) -> str:
    """``payload`` + ``('ticket', 'id')`` → ``payload.ticket.id``."""
    text = format_path(at)
    if not text:
        return prefix
    return f"{prefix}{text}" if text.startswith("[") else f"{prefix}.{text}"


@dataclass(frozen=True, slots=True)
class Failure:
    loc: Location
    what: str  # 'then.calls[0] tickets.create_ticket'
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.what}: {self.message}" if self.what else f"{self.loc}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.loc.file, "line": self.loc.line, "column": self.loc.column,
                "what": self.what, "message": self.message}


@dataclass
class CaseResult:
    file: str
    name: str
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    calls: list[str] = field(default_factory=list)  # 'tickets.create_ticket (attempt 1): reply'

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "name": self.name, "passed": self.passed,
                "seconds": round(self.seconds, 3), "failures": [f.to_dict() for f in self.failures],
                "calls": self.calls}


def summary(results: Sequence[CaseResult]) -> str:
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"


def lines(result: CaseResult) -> list[str]:
    """``PASS name`` or ``FAIL name`` followed by one indented line per failure."""
    if result.passed:
        return [f"PASS {result.name}"]
    out = [f"FAIL {result.name}"]
    out.extend(f"  {f}" for f in result.failures)
    if result.calls:
        out.append("  calls made: " + "; ".join(result.calls))
    return out


def as_json(results: Sequence[CaseResult]) -> dict[str, Any]:
    passed = sum(r.passed for r in results)
    return {"passed": passed, "failed": len(results) - passed,
            "note": "retry, publish and breaker delays are compressed to at most 50 ms",
            "tests": [r.to_dict() for r in results]}
