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
connectors) lives here until it moves next to ``connectors.http.send``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    PermanentError,
    RetryableError,
    action,
    classify_http_status,
)
from connectors.http import redact, where

KEY_LINE = "tieline-idempotency-key: "
_HINTS = {
    401: "credentials refused: check the connector's credentials (and that the vendor's REST API is enabled)",
    403: "forbidden: the API user lacks the permission for this operation",
    404: "not found: check the id (and that the API user can see it)",
}


class VendorClient:
    """One vendor's HTTP seam: base URL, auth headers, timeout, and failures as Retryable/Permanent.

    ``message_of(parsed_body)`` returns the vendor's own error text, which goes into the error
    message (credentials are redacted); an empty answer falls back to a hint per status.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        message_of: Callable[[Any], str],
        client: httpx.AsyncClient | None = None,
        secrets: Iterable[str] = (),
    ):
        self.name, self.base_url, self.timeout, self.message_of = name, base_url.rstrip("/"), timeout, message_of
        self._headers = dict(headers)
        self._secrets = [s for s in secrets if s]
        self._client, self._owns = client, False

    def __repr__(self) -> str:
        return f"<VendorClient {self.name!r} {self.base_url}>"

    async def start(self) -> None:
        if self._client is None:
            self._client, self._owns = httpx.AsyncClient(timeout=self.timeout), True

    async def close(self) -> None:
        if self._owns and self._client is not None:
            await self._client.aclose()
            self._client, self._owns = None, False

    async def call(
        self,
        method: str,
        path: str,
        ctx: CallContext,
        action: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; return the 2xx/3xx response or raise the classified error."""
        await self.start()
        assert self._client is not None
        hdrs = {**self._headers, "Accept": "application/json", **(headers or {})}
        if ctx.traceparent:
            hdrs["traceparent"] = ctx.traceparent
        timeout = min(self.timeout, ctx.timeout) if ctx.timeout else self.timeout
        body = {} if json is None else {"content": orjson.dumps(json)}
        if json is not None:
            hdrs["Content-Type"] = "application/json"
        req = self._client.build_request(method, self.base_url + path, params=params, headers=hdrs, timeout=timeout, **body)
        target = f"connector {self.name!r} action {action!r} at {ctx.step}: {method} {where(req.url)}"
        try:
            response = await self._client.send(req)
        except httpx.TimeoutException:
            raise RetryableError(f"{target}: no answer within {timeout:g} s (timeout); will retry") from None
        except httpx.TransportError as exc:
            detail = redact(str(exc), self._secrets) or "no detail"
            raise RetryableError(f"{target}: {type(exc).__name__}: {detail}; is the host up?") from None
        except httpx.HTTPError as exc:  # a bad URL or header: retrying cannot help
            raise PermanentError(f"{target}: {type(exc).__name__}: {redact(str(exc), self._secrets)}") from None
        if response.status_code < 400:
            return response
        parsed = _json(response.content)
        said = self.message_of(parsed) or _HINTS.get(response.status_code) or response.text[:300]
        err = classify_http_status(response.status_code, response.headers.get("retry-after"), "")
        err.args = (f"{target}: HTTP {response.status_code}: {redact(said, self._secrets)}",)
        err.detail = parsed
        raise err


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


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
