"""Tiny connector types and a file writer for the config tests (no real connectors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.base import Connector, action


class Phone(Connector):
    type_name = "phone"
    events = {"call.completed": {"type": "object"}, "sms.received": {"type": "object"}}


class Desk(Connector):
    type_name = "desk"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url"],
        "properties": {"base_url": {"type": "string"}, "timeout": {"type": "number"},
                       "token": {"type": "string"}},
    }
    secret_fields = frozenset({"token"})

    @action("create_ticket", {"type": "object"})
    async def create_ticket(self, payload, ctx):
        return {"id": 1}

    @action("get_ticket", {"type": "object"})
    async def get_ticket(self, payload, ctx):
        return {"id": 1}


class Hook(Connector):
    """Events named in settings, like the generic webhook type."""

    type_name = "hook"
    config_schema = {"type": "object", "additionalProperties": False,
                     "properties": {"events": {"type": "array", "items": {"type": "string"}}}}

    @classmethod
    def event_names_for(cls, settings):
        return set(settings.get("events") or ())


TYPES = {"phone": Phone, "desk": Desk, "hook": Hook}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write files under a fresh directory (cwd), so issues read 'flows.yaml:L:C: ...'."""
    monkeypatch.chdir(tmp_path)

    def write(files: dict[str, str]) -> Path:
        for name, text in files.items():
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return tmp_path

    return write
