"""The freshdesk connector: the tieline contract kit, then each action against the fake on loopback."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tieline_freshdesk.connector import FreshdeskConnector
from tieline_freshdesk.fake import SANDBOX_API_KEY, FreshdeskState, make_freshdesk_app

from connectors.base import CallContext, ConnectorDeps, PermanentError
from connectors.registry import ConnectorRegistry
from connectors.testing import serve_app
from connectors.testing.contract import ConnectorContract

NEW = {"email": "ann@example.com", "subject": "Printer offline", "description": "<p>It does not print.</p>",
       "priority": 3, "status": 2, "source": 3, "tags": ["hardware"]}
CTX = CallContext(message_id="01HZZ", flow="tickets", step="steps[0]", idempotency_key="01HZZ-0")


class TestFreshdeskContract(ConnectorContract):
    """Everything the kit checks: schemas, error classes, timeouts, secrets, input checks."""

    connector_type = FreshdeskConnector

    def valid_settings(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "api_key": SANDBOX_API_KEY, "timeout": 5}

    def wrong_credentials(self, base_url: str) -> dict[str, Any]:
        return {**self.valid_settings(base_url), "api_key": "not-the-sandbox-key"}

    def make_fake_app(self):
        return make_freshdesk_app(FreshdeskState())

    def sample_action(self) -> tuple[str, Any]:
        return "create_ticket", NEW


@pytest.fixture
async def desk():
    """A started connector pointed at a fresh fake; yields (connector, state)."""
    state = FreshdeskState()
    async with serve_app(make_freshdesk_app(state)) as url:
        registry = ConnectorRegistry()
        registry.register(FreshdeskConnector)
        conn = registry.build("desk", "freshdesk", {"base_url": url, "api_key": SANDBOX_API_KEY}, ConnectorDeps())
        await conn.start()
        yield conn, state
        await conn.close()


async def test_create_ticket_sends_the_fields_and_returns_a_summary(desk):
    """create_ticket POSTs the fields as JSON and returns id, status and the agent URL."""
    conn, state = desk
    result = await conn.call("create_ticket", NEW, CTX)
    assert state.tickets[result["id"]]["subject"] == "Printer offline"
    assert state.tickets[result["id"]]["tags"] == ["hardware"]
    assert result["status"] == 2 and result["priority"] == 3
    assert result["url"].endswith(f"/a/tickets/{result['id']}")


async def test_update_note_and_get_work_on_the_created_ticket(desk):
    """update_ticket changes fields, add_note attaches a private note, get_ticket reads it back."""
    conn, state = desk
    tid = (await conn.call("create_ticket", NEW, CTX))["id"]
    updated = await conn.call("update_ticket", {"id": tid, "status": 4, "tags": ["done"]}, CTX)
    note = await conn.call("add_note", {"id": tid, "body": "Replaced the toner."}, CTX)
    got = await conn.call("get_ticket", {"id": tid}, CTX)
    assert updated["status"] == 4 and got["status"] == 4 and got["tags"] == ["done"]
    assert note == {"id": note["id"], "ticket_id": tid, "private": True}
    assert state.notes[0]["body"] == "Replaced the toner."
    assert got["description_text"] == NEW["description"]


@pytest.mark.parametrize(
    ("action", "payload", "expected"),
    [
        ("get_ticket", {"id": 999}, "HTTP 404: not found"),
        ("add_note", {"id": 999, "body": "x"}, "HTTP 404: not found"),
        ("create_ticket", {"phone": "+4930123", "subject": "s", "description": "d"},
         "Validation failed: name: It should be a/an String (missing_field)"),
    ],
    ids=["get-unknown", "note-unknown", "phone-without-name"],
)
async def test_vendor_refusals_are_permanent_with_its_message(desk, action, payload, expected):
    """A 4xx from Freshdesk is a PermanentError carrying Freshdesk's own error text."""
    conn, _state = desk
    with pytest.raises(PermanentError, match=re.escape(expected)):
        await conn.call(action, payload, CTX)


async def test_wrong_api_key_names_freshdesks_reason():
    """A refused API key is a PermanentError with Freshdesk's invalid_credentials message, key hidden."""
    async with serve_app(make_freshdesk_app(FreshdeskState())) as url:
        conn = FreshdeskConnector("desk", {"base_url": url, "api_key": "wrong-key-0000"})
        with pytest.raises(PermanentError, match="invalid_credentials: You have to be logged in") as info:
            await conn.call("get_ticket", {"id": 1}, CTX)
        await conn.close()
    assert "wrong-key-0000" not in str(info.value)


def test_domain_setting_builds_the_freshdesk_url():
    """domain: acme points the connector at https://acme.freshdesk.com."""
    conn = FreshdeskConnector("desk", {"domain": "acme", "api_key": SANDBOX_API_KEY})
    assert conn.settings.base_url == "https://acme.freshdesk.com"
