"""Field projection: only allow-listed dotted paths leave."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.security.fields import Projection, project

TICKET = {"id": 7, "status": "open", "updated_at": "2026-01-01",
          "customer": {"name": "Ann", "phone": "+331", "address": {"city": "Lyon", "zip": "69001"}},
          "notes": [{"text": "hi", "author": "bob"}, {"text": "yo", "author": "eve"}],
          "secret": "x"}

CASES = [
    pytest.param(["id", "status"], {"id": 7, "status": "open"}, id="top-level"),
    pytest.param(["customer.name"], {"customer": {"name": "Ann"}}, id="nested"),
    pytest.param(["customer.address.city"], {"customer": {"address": {"city": "Lyon"}}}, id="deep"),
    pytest.param(["customer", "customer.name"], {"customer": TICKET["customer"]}, id="prefix-keeps-all"),
    pytest.param(["customer.name", "customer"], {"customer": TICKET["customer"]}, id="prefix-after"),
    pytest.param(["notes.text"], {"notes": [{"text": "hi"}, {"text": "yo"}]}, id="list-inside"),
    pytest.param(["missing", "id.deeper"], {}, id="absent-or-scalar-dropped"),
    pytest.param([], {}, id="empty-allows-nothing"),
]


@pytest.mark.parametrize(("allowed", "expected"), CASES)
def test_project_dict(allowed: list[str], expected: dict) -> None:
    """Only the allowed paths survive; a scalar where an object is expected is dropped."""
    assert project(TICKET, allowed) == expected


def test_project_list_of_dicts() -> None:
    """A list of records is projected record by record."""
    assert project([TICKET, {"id": 8, "secret": "y"}], ["id"]) == [{"id": 7}, {"id": 8}]


def test_none_means_unrestricted() -> None:
    """No allow-list (the client has none for this flow) returns the data unchanged."""
    assert project(TICKET, None) is TICKET


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a."])
def test_bad_paths_are_refused(path: str) -> None:
    """Empty path segments are a configuration mistake, reported with the path."""
    with pytest.raises(ValueError, match="not a dotted path"):
        Projection([path])


json_values = st.recursive(st.none() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from("abcs"), inner, max_size=4),
                           max_leaves=20)


def _keys_within(value, path: tuple[str, ...]) -> bool:
    """Every dict on the way down uses only the next allowed key (lists are transparent)."""
    if isinstance(value, list):
        return all(_keys_within(v, path) for v in value)
    if not path:
        return True
    if not isinstance(value, dict):
        return False  # a scalar where an object was expected must have been dropped
    return set(value) <= {path[0]} and all(_keys_within(v, path[1:]) for v in value.values())


@given(json_values)
def test_nothing_outside_the_allow_list_survives(data) -> None:
    """Whatever the shape of the data, only the allowed path b.c (and below) remains."""
    result = project(data, ["b.c"])
    assert result is None or _keys_within(result, ("b", "c"))  # None: a scalar, dropped whole
