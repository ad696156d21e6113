"""The contract kit run against the built-in connector types, and the kit's own ability to fail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from connectors.base import ConnectorError, InboundRequest, PermanentError, RetryableError
from connectors.http import HttpConnector
from connectors.redmine import RedmineConnector
from connectors.request_tracker import RequestTrackerConnector
from connectors.testing.contract import ConnectorContract, secret_values
from connectors.testing.fakes import redmine as redmine_fake
from connectors.testing.fakes import request_tracker as rt_fake
from connectors.testing.sink import SinkState, make_sink_app
from connectors.webhook import WebhookConnector

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class TestHttpContract(ConnectorContract):
    connector_type = HttpConnector

    def valid_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "auth": {"bearer": "sandbox-bearer-token"}, "timeout": 5}

    def make_fake_app(self):
        return make_sink_app(SinkState())

    def sample_action(self) -> tuple[str, Any]:
        return "request", {"method": "POST", "path": "/tickets", "json": {"subject": "hi"}}


def standard_signed(settings, ts: float, body: bytes = b'{"id": "evt_1", "kind": "ping"}') -> InboundRequest:
    """A request signed by the standardwebhooks package (independent of connectors.signing)."""
    sig = Webhook(settings["secret"]).sign("msg_1", datetime.fromtimestamp(ts, tz=UTC), body.decode())
    headers = {"content-type": "application/json", "webhook-id": "msg_1",
               "webhook-timestamp": str(int(ts)), "webhook-signature": sig}
    return InboundRequest("POST", "http://bus/hooks/in", "/hooks/in", headers, {}, body)


class TestWebhookContract(ConnectorContract):
    connector_type = WebhookConnector

    def valid_settings(self, base_url: str) -> dict[str, Any]:
        return {"verify": "standard", "secret": SECRET, "url": base_url + "/hooks", "timeout": 5}

    def make_fake_app(self):
        return make_sink_app(SinkState())

    def sample_action(self) -> tuple[str, Any]:
        return "send", {"order": 7}

    def signed_request(self, settings, now):
        return standard_signed(settings, now)

    def stale_request(self, settings, now):
        return standard_signed(settings, now - 3600)



class TestRedmineContract(ConnectorContract):
    connector_type = RedmineConnector

    def valid_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "api_key": redmine_fake.SANDBOX_API_KEY, "project_id": "support", "timeout": 5}

    def wrong_credentials(self, base_url: str) -> dict[str, Any]:
        return {**self.valid_settings(base_url), "api_key": "not-the-sandbox-key"}

    def make_fake_app(self):
        return redmine_fake.make_redmine_app(redmine_fake.RedmineState())

    def sample_action(self) -> tuple[str, Any]:
        return "create_issue", {"subject": "Printer offline"}


class TestRequestTrackerContract(ConnectorContract):
    connector_type = RequestTrackerConnector

    def valid_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": f"{base_url}/REST/2.0", "token": rt_fake.SANDBOX_TOKEN, "queue": "Support", "timeout": 5}

    def wrong_credentials(self, base_url: str) -> dict[str, Any]:
        return {**self.valid_settings(base_url), "token": "1-14-not-the-token"}

    def make_fake_app(self):
        return rt_fake.make_rt_app(rt_fake.RTState())

    def sample_action(self) -> tuple[str, Any]:
        return "create_ticket", {"Subject": "Parcel lost", "Requestor": "ann@example.com", "Content": "Order 7"}


# ----- the kit must be able to fail: a deliberately broken connector -------------------------

@dataclass
class _Creds:
    token: str  # shown by repr(): the leak the kit must catch


class LeakyHttp(HttpConnector):
    """Keeps its token in a repr-visible dataclass and turns every failure permanent."""

    type_name = "leaky_http"

    def __init__(self, name, settings, deps=None):
        super().__init__(name, settings, deps)
        self.creds = _Creds(settings["auth"]["bearer"])

    async def request(self, payload, ctx):
        try:
            return await super().request(payload, ctx)
        except ConnectorError as exc:
            raise PermanentError(str(exc)) from None


class _LeakyContract(TestHttpContract):
    connector_type = LeakyHttp


@pytest.mark.parametrize(
    ("check", "complaint"),
    [
        ("test_connection_refused_is_retryable", "connection refused raised PermanentError"),
        ("test_error_status_is_classified", "HTTP 503 raised PermanentError"),
        ("test_secrets_stay_out_of_repr_errors_and_logs", "leaked into: _Creds"),
    ],
    ids=["refused", "status", "secrets"],
)
def test_kit_catches_a_broken_connector(check: str, complaint: str):
    """A connector that shows its token in repr and never retries fails the kit's checks."""
    kit = _LeakyContract()
    args = (503, RetryableError) if check == "test_error_status_is_classified" else ()
    with pytest.raises(AssertionError, match=complaint):
        getattr(kit, check)(*args)


def test_kit_fails_when_an_inbound_type_lacks_signing_hooks():
    """A type declaring events without signed_request() fails instead of skipping."""

    class NoHooks(ConnectorContract):
        connector_type = WebhookConnector

        def valid_settings(self, base_url):
            return {"verify": "standard", "secret": SECRET}

    with pytest.raises(NotImplementedError, match="signed_request"):
        NoHooks().test_verify_accepts_signed_request()


def test_secret_values_walks_nested_settings():
    """secret_values finds strings nested in secret fields and ignores short or public ones."""
    settings = {"auth": {"basic": {"username": "bob-user", "password": "pw-12345"}}, "base_url": "http://x",
                "headers": {"X-Key": "abc"}}
    assert sorted(secret_values(settings, {"auth", "headers"})) == ["bob-user", "pw-12345"]
    assert orjson.dumps(settings)  # settings stay JSON-able (not mutated)
