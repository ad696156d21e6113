"""The ``redmine`` connector: Redmine issues REST API (JSON).

Looked up (search tool, pages corpus): redmine.org wiki "Rest_api" and "Rest_Issues"
(https://www.redmine.org/projects/redmine/wiki/Rest_Issues):
* auth: ``X-Redmine-API-Key: <key>`` header (REST API must be enabled in Administration > Settings > API);
* ``POST /issues.json`` ``{"issue": {project_id, subject, description, tracker_id, priority_id,
  assigned_to_id, custom_fields: [{id, value}]}}`` → ``201 Created`` with ``{"issue": {...}}``;
* ``PUT /issues/{id}.json`` (fields, ``notes``, ``private_notes``) → ``204 No Content``
  (Redmine < 4.x answers ``200`` with an empty body; both are taken);
* ``GET /issues/{id}.json`` → ``{"issue": {...}}``; ``GET /issues.json?project_id=..&status_id=*&cf_N=..``
  lists issues, ``cf_N`` only for custom fields marked "used as a filter";
* ``422 Unprocessable Entity`` → ``{"errors": ["Subject cannot be blank", ...]}``; 401/403/404 come
  with an empty body.

Idempotency. Redmine has no idempotency key, so ``create_issue`` writes the step's key into
the issue: into the custom field ``idempotency_custom_field_id`` when configured (a text field,
"used as a filter", enabled for the project's trackers), else into a last line of the
description, ``tieline-idempotency-key: <key>``. On a retry (``ctx.attempt > 1``) it first
searches for an issue carrying the key (``cf_N=<key>``, else ``description=~<key>``) and returns
it (``replayed: true``) instead of creating a second one.

:class:`VendorClient` (the HTTP seam with error classification shared by the ticketing
connectors) lives here until it moves next to ``connectors.http_calls.send``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    PermanentError,
    action,
)
from connectors.vendor import VendorClient

KEY_LINE = "tieline-idempotency-key: "
def redmine_message(body: Any) -> str:
    """Redmine's validation messages: ``{"errors": ["Subject cannot be blank", ...]}``."""
    if isinstance(body, Mapping) and isinstance(body.get("errors"), list):
        return "; ".join(str(e) for e in body["errors"])
    return ""


@dataclass(frozen=True, slots=True)
class RedmineSettings:
    base_url: str
    api_key: str = field(repr=False)
    project_id: int | str | None = None
    idempotency_custom_field_id: int | None = None
    timeout: float = 10.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> RedmineSettings:
        return cls(
            base_url=str(raw["base_url"]).rstrip("/"),
            api_key=raw["api_key"],
            project_id=raw.get("project_id"),
            idempotency_custom_field_id=raw.get("idempotency_custom_field_id"),
            timeout=float(raw.get("timeout", 10)),
        )


_ISSUE_ID = {"type": "integer", "minimum": 1, "description": "Redmine issue id"}
_CUSTOM = {"type": "array", "items": {"type": "object", "required": ["id", "value"],
                                      "properties": {"id": {"type": "integer"}, "value": {}}}}
_ISSUE_FIELDS: dict[str, Any] = {
    "project_id": {"type": ["integer", "string"], "description": "id or identifier; default settings.project_id"},
    "subject": {"type": "string", "minLength": 1},
    "description": {"type": "string"},
    "tracker_id": {"type": "integer"},
    "status_id": {"type": "integer"},
    "priority_id": {"type": "integer"},
    "assigned_to_id": {"type": "integer"},
    "category_id": {"type": "integer"},
    "custom_fields": _CUSTOM,
}


def summary(issue: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """The fields issue actions return; ``url`` is the issue's web page."""
    def name(key: str) -> Any:
        value = issue.get(key)
        return value.get("name") if isinstance(value, Mapping) else value

    return {"id": issue.get("id"), "subject": issue.get("subject"), "status": name("status"),
            "priority": name("priority"), "updated_on": issue.get("updated_on"),
            "url": f"{base_url}/issues/{issue.get('id')}"}


class RedmineConnector(Connector):
    """Create, update, annotate and read Redmine issues."""

    type_name = "redmine"
    description = "Redmine issues over its REST API (X-Redmine-API-Key)."
    secret_fields = frozenset({"api_key"})
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url", "api_key"],
        "properties": {
            "base_url": {"type": "string", "pattern": "^https?://", "description": "Redmine root, e.g. https://redmine.example.com"},
            "api_key": {"type": "string", "minLength": 1, "description": "the API user's key (My account > API access key); use ${ENV}"},
            "project_id": {"type": ["integer", "string"], "description": "default project (id or identifier) for create_issue"},
            "idempotency_custom_field_id": {"type": "integer", "minimum": 1, "description": "text custom field (used as a filter) that stores the idempotency key; default: a description footer"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds per API call (default 10)"},
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = RedmineSettings.parse(settings)
        self.http = VendorClient(name, self.settings.base_url, {"X-Redmine-API-Key": self.settings.api_key},
                                 self.settings.timeout, redmine_message, self.deps.http, secrets=[self.settings.api_key])

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    @action("create_issue", {"type": "object", "additionalProperties": False, "required": ["subject"], "properties": _ISSUE_FIELDS},
            "POST /issues.json; returns {id, subject, status, priority, updated_on, url, replayed}.")
    async def create_issue(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        issue = dict(payload)
        project = issue.setdefault("project_id", self.settings.project_id)
        if project is None:
            raise PermanentError(f"connector {self.name!r} action 'create_issue' at {ctx.step}: project_id: "
                                 "not given; set it in the input or settings.project_id")
        key, cf = ctx.idempotency_key, self.settings.idempotency_custom_field_id
        if ctx.attempt > 1 and (found := await self._find(project, key, ctx)) is not None:
            return {**summary(found, self.settings.base_url), "replayed": True}
        if cf is not None:
            issue["custom_fields"] = [*(f for f in issue.get("custom_fields", []) if f["id"] != cf), {"id": cf, "value": key}]
        else:
            issue["description"] = f"{issue.get('description', '').rstrip()}\n\n{KEY_LINE}{key}".lstrip()
        response = await self.http.call("POST", "/issues.json", ctx, "create_issue", json={"issue": issue})
        return {**summary(orjson.loads(response.content)["issue"], self.settings.base_url), "replayed": False}

    async def _find(self, project: int | str, key: str, ctx: CallContext) -> Mapping[str, Any] | None:
        """The issue a previous attempt created, if any (searched by the stored key)."""
        cf = self.settings.idempotency_custom_field_id
        query = {"project_id": project, "status_id": "*", "limit": 2}
        query.update({f"cf_{cf}": key} if cf is not None else {"description": f"~{KEY_LINE}{key}"})
        response = await self.http.call("GET", "/issues.json", ctx, "create_issue", params=query)
        issues = orjson.loads(response.content).get("issues", [])
        return issues[0] if issues else None

    @action("update_issue", {"type": "object", "additionalProperties": False, "required": ["id"], "minProperties": 2,
                             "properties": {"id": _ISSUE_ID, **_ISSUE_FIELDS, "notes": {"type": "string"},
                                            "private_notes": {"type": "boolean"}}},
            "PUT /issues/{id}.json with the given fields (and notes); returns {id, updated: true}.")
    async def update_issue(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        fields = {k: v for k, v in payload.items() if k != "id"}
        await self.http.call("PUT", f"/issues/{payload['id']}.json", ctx, "update_issue", json={"issue": fields})
        return {"id": payload["id"], "updated": True}

    @action("add_note", {"type": "object", "additionalProperties": False, "required": ["id", "notes"],
                         "properties": {"id": _ISSUE_ID, "notes": {"type": "string", "minLength": 1},
                                        "private_notes": {"type": "boolean", "description": "visible to members with the permission only"}}},
            "Add a journal note (PUT /issues/{id}.json with notes); returns {id, updated: true}.")
    async def add_note(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        fields = {"notes": payload["notes"], "private_notes": bool(payload.get("private_notes", False))}
        await self.http.call("PUT", f"/issues/{payload['id']}.json", ctx, "add_note", json={"issue": fields})
        return {"id": payload["id"], "updated": True}

    @action("get_issue", {"type": "object", "additionalProperties": False, "required": ["id"], "properties": {"id": _ISSUE_ID}},
            "GET /issues/{id}.json; returns {id, subject, status, priority, updated_on, url, issue}.")
    async def get_issue(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        response = await self.http.call("GET", f"/issues/{payload['id']}.json", ctx, "get_issue")
        issue = orjson.loads(response.content)["issue"]
        return {**summary(issue, self.settings.base_url), "issue": issue}
