"""Custom JMESPath functions and the closure compiler that evaluates expressions."""

from __future__ import annotations

import re
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jmespath import exceptions as jexc

from bus.functions import FunctionError, TielineFunctions, keywords, to_text

EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.fixture
def funcs() -> TielineFunctions:
    return TielineFunctions(clock=lambda: EPOCH)


def run(funcs: TielineFunctions, expr: str, data: Any = None) -> Any:
    return jmespath.search(expr, data if data is not None else {}, options=funcs.options)


CASES = [
    # e164
    ("e164('(415) 555-2671', 'US')", {}, "+14155552671", "e164-national-us"),
    ("e164('+44 20 7946 0958')", {}, "+442079460958", "e164-international-no-region"),
    ("e164('020 7946 0958', 'gb')", {}, "+442079460958", "e164-region-lowercase"),
    ("e164(p, 'US')", {"p": 4155552671}, "+14155552671", "e164-number-input"),
    ("e164('not a phone', 'US')", {}, None, "e164-unparsable-null"),
    ("e164('123', 'US')", {}, None, "e164-invalid-null"),
    ("e164('4155552671')", {}, None, "e164-national-without-region-null"),
    ("e164(missing, 'US')", {}, None, "e164-null-null"),
    # time
    ("now()", {}, "2023-11-14T22:13:20.000Z", "now-iso-z"),
    ("now_epoch()", {}, EPOCH, "now-epoch"),
    ("add_seconds('2024-01-01T00:00:00Z', `90`)", {}, "2024-01-01T00:01:30.000Z", "add-seconds"),
    (
        "add_seconds('2024-01-01T01:00:00+01:00', `-60`)",
        {},
        "2023-12-31T23:59:00.000Z",
        "add-offset",
    ),
    ("add_seconds('2024-01-01T00:00:00', `0.5`)", {}, "2024-01-01T00:00:00.500Z", "add-naive-utc"),
    ("add_seconds(missing, `5`)", {}, None, "add-seconds-null"),
    # keywords
    ("contains_any('I will call my LAWYER', ['lawyer'])", {}, True, "contains-case-insensitive"),
    ("contains_any('lawyers are here', ['lawyer'])", {}, False, "contains-whole-word-only"),
    ("contains_any('this is a charge  back', ['charge back'])", {}, True, "contains-phrase"),
    ("contains_any('I use c++ daily', ['c++'])", {}, True, "contains-punctuation-word"),
    ("contains_any('nothing here', ['fraud', 'lawyer'])", {}, False, "contains-none"),
    ("contains_any(missing, ['fraud'])", {}, False, "contains-null-text"),
    ("contains_any('fraud', `[]`)", {}, False, "contains-no-words"),
    (
        "matched_keywords('Fraud! my lawyer says fraud', ['lawyer', 'fraud', 'FRAUD', 'refund'])",
        {},
        ["lawyer", "fraud"],
        "matched-order-dedup",
    ),
    ("matched_keywords(missing, ['x'])", {}, [], "matched-null-text"),
    # strings and values
    ("coalesce(a, b, c)", {"a": None, "b": "", "c": "x"}, "x", "coalesce-skips-null-empty"),
    ("coalesce(a, b)", {"a": 0, "b": 1}, 0, "coalesce-keeps-zero"),
    ("coalesce(a, b)", {}, None, "coalesce-all-null"),
    ("lower('MiXed')", {}, "mixed", "lower"),
    ("upper('MiXed')", {}, "MIXED", "upper"),
    ("trim('  pad  ')", {}, "pad", "trim"),
    ("lower(missing)", {}, None, "lower-null"),
    ("concat('a', `1`, `true`, missing, `[1]`)", {}, "a1true[1]", "concat-stringifies"),
    ("split('a,b,,c', ',')", {}, ["a", "b", "", "c"], "split"),
    ("split(missing, ',')", {}, None, "split-null"),
    ("default(missing, 'fb')", {}, "fb", "default-null"),
    ("default('', 'fb')", {}, "", "default-keeps-empty"),
    ("hash_percent('customer-42')", {}, 69, "hash-percent-stable"),
    ("hash_percent(`42`)", {}, 37, "hash-percent-number"),
]


@pytest.mark.parametrize(
    ("expr", "data", "expected"), [c[:3] for c in CASES], ids=[c[3] for c in CASES]
)
def test_function_results(funcs: TielineFunctions, expr: str, data: Any, expected: Any) -> None:
    """Each custom function returns the documented value, null-tolerant where promised."""
    assert run(funcs, expr, data) == expected


def test_hash_percent_spreads_over_0_to_99(funcs: TielineFunctions) -> None:
    """hash_percent stays in 0..99 and uses most buckets (usable for canary splits)."""
    values = {run(funcs, "hash_percent(@)", f"id-{i}") for i in range(2000)}
    assert min(values) >= 0 and max(values) <= 99
    assert len(values) > 90


def test_clock_is_injected_per_instance() -> None:
    """Two instances with different clocks do not share time (no process globals)."""
    a, b = TielineFunctions(clock=lambda: 0.0), TielineFunctions(clock=lambda: 60.0)
    assert run(a, "now()") == "1970-01-01T00:00:00.000Z"
    assert run(b, "now()") == "1970-01-01T00:01:00.000Z"


WRONG_TYPES = [
    ("lower(`5`)", jexc.JMESPathTypeError, "lower-number"),
    ("contains_any('x', [`1`])", jexc.JMESPathTypeError, "contains-number-words"),
    ("add_seconds('yesterday', `5`)", FunctionError, "add-seconds-unparsable"),
    ("split('a', '')", FunctionError, "split-empty-separator"),
    ("e164(`true`)", jexc.JMESPathTypeError, "e164-boolean"),
]


@pytest.mark.parametrize(
    ("expr", "error"), [c[:2] for c in WRONG_TYPES], ids=[c[2] for c in WRONG_TYPES]
)
def test_unusable_arguments_raise(funcs: TielineFunctions, expr: str, error: type) -> None:
    """Wrong types and unusable values raise (the mapping turns them into MappingError)."""
    with pytest.raises(error):
        run(funcs, expr)


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, ""), ("s", "s"), (True, "true"), (3, "3"), (1.5, "1.5"), ({"a": [1]}, '{"a":[1]}')],
    ids=["null", "string", "bool", "int", "float", "object"],
)
def test_to_text(value: Any, text: str) -> None:
    """Templates and concat stringify values the documented way."""
    assert to_text(value) == text


import pytest as _pytest  # noqa: E402

from bus.mapping import compile_expression as _compile  # noqa: E402


@_pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("get(body.rules, body.category)", {"queue": "Housing"}),
        ("get(body.rules, 'nope')", None),
        ("get(body.rules, `7`)", "seven"),
        ("get(null, 'x')", None),
    ],
    ids=["found", "missing", "number-key", "null-table"],
)
def test_get_looks_up_a_computed_key(expr, expected):
    """get(table, key) reads a rules table with a key taken from the message."""
    view = {
        "body": {"rules": {"housing": {"queue": "Housing"}, "7": "seven"}, "category": "housing"}
    }
    assert _compile(expr).search(view) == expected


def _reference_contains(text: str | None, words: list[str]) -> bool:
    # contains_any as first written: one case-insensitive regex, word boundaries by \w.
    phrases = [r"\s+".join(map(re.escape, w.split())) for w in words if w.strip()]
    if not text or not phrases:
        return False
    pattern = re.compile(r"(?<!\w)(?:{})(?!\w)".format("|".join(phrases)), re.IGNORECASE)
    return pattern.search(text) is not None


# ASCII and a few letters whose case rules differ (long s, Kelvin sign, dotted/dotless i).
_LETTERS = "abkKsSiI +-_.,\t\n1\u017f\u212a\u0130\u0131\u00e9"


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet=_LETTERS, max_size=24),
    words=st.lists(st.text(alphabet=_LETTERS, max_size=5), max_size=4),
)
def test_keyword_search_matches_the_plain_regex(text: str, words: list[str]) -> None:
    """The ASCII fast path finds exactly what one case-insensitive regex finds."""
    assert keywords(tuple(words)).contains(text) == _reference_contains(text, words)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CHARGE  BACK now", True),
        ("chargeback", False),
        ("a charge\tback", True),
        ("charge backs", False),
        ("xfraud", False),
        ("fraud_", False),
        ("(fraud)", True),
        ("I use C++ daily", True),
        ("\u017fome fraud", True),
        ("nothing", False),
        ("", False),
        (None, False),
    ],
)
def test_contains_any_with_constant_words(funcs: TielineFunctions, text: Any, expected: bool):
    """contains_any with a literal word list (compiled once) keeps whole-word, any-case rules."""
    words = '`["fraud", "charge back", "c++"]`'
    compiled = _compile(f"contains_any(body.t, {words})", functions=funcs)
    assert compiled.search({"body": {"t": text}}) is expected
