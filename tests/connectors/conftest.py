"""Fixtures shared by the connector tests: one real sink on loopback for the whole package."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from connectors.base import CallContext
from connectors.testing import SinkState, make_sink_app, run_in_thread


@dataclass(frozen=True)
class Sink:
    state: SinkState
    url: str


@pytest.fixture(scope="session")
def _sink_server() -> Iterator[Sink]:
    state = SinkState()
    with run_in_thread(make_sink_app(state)) as url:
        yield Sink(state, url)


@pytest.fixture
def sink(_sink_server: Sink) -> Sink:
    """The shared sink, forgotten and reset to 'answer 200' before each test."""
    _sink_server.state.reset()
    return _sink_server


@pytest.fixture
def ctx() -> CallContext:
    return CallContext(
        message_id="01HZZTEST",
        flow="orders",
        step="steps[1]",
        idempotency_key="01HZZTEST-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
