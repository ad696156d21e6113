"""Test kit for connector authors: a fake HTTP sink and helpers to serve apps on loopback.

    from connectors.testing import SinkState, make_sink_app, serve_app

    state = SinkState()
    async with serve_app(make_sink_app(state)) as base_url:
        ...  # point your connector at base_url, then assert on state.requests
"""

from connectors.testing.server import free_port, run_in_thread, serve_app
from connectors.testing.sink import SinkRequest, SinkState, make_sink_app

__all__ = ["SinkRequest", "SinkState", "free_port", "make_sink_app", "run_in_thread", "serve_app"]
