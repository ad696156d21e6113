"""A fake Redmine issues REST API (JSON), enforcing what Redmine enforces.

    state = RedmineState()                       # API key SANDBOX_API_KEY, project 1 "support"
    app = with_faults(make_redmine_app(state), faults)
    ... state.issues[1]["subject"], state.issues[1]["journals"]

* auth: ``X-Redmine-API-Key`` header or ``?key=``; missing/wrong → 401 with an empty body;
* ``POST /issues.json`` → 201 ``{"issue"}``, or 422 ``{"errors": ["Subject cannot be blank", ...]}``;
* ``PUT /issues/{id}.json`` → 204 (``notes`` become a journal), ``GET /issues/{id}.json`` → ``{"issue"}``
  (``?include=journals``), both 404 with an empty body for an unknown id;
* ``GET /issues.json`` filters ``project_id``, ``status_id`` (open/closed/``*``/id), ``cf_N=value``
  and ``description=~text``.

Routes are relative, so the app works mounted under ``/sandbox/redmine``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["SANDBOX_API_KEY", "RedmineState", "make_redmine_app"]

SANDBOX_API_KEY = "sandbox-redmine-api-key"
STATUSES = {1: "New", 2: "In Progress", 3: "Resolved", 4: "Feedback", 5: "Closed", 6: "Rejected"}
CLOSED = {5, 6}
PRIORITIES = {1: "Low", 2: "Normal", 3: "High", 4: "Urgent", 5: "Immediate"}
TRACKERS = {1: "Bug", 2: "Feature", 3: "Support"}
_PLAIN = ("subject", "description")
_REFS = {"tracker_id": ("tracker", TRACKERS), "status_id": ("status", STATUSES), "priority_id": ("priority", PRIORITIES)}


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json; charset=utf-8")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RedmineState:
    """Projects and issues of one fake Redmine; ``issues`` is keyed by id."""

    def __init__(self, api_key: str = SANDBOX_API_KEY, projects: dict[int, str] | None = None):
        self.api_key = api_key
        self.projects = dict(projects or {1: "support"})  # id → identifier
        self.issues: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) that reached the fake
        self._ids = itertools.count(1)

    def project(self, ref: Any) -> int | None:
        for pid, ident in self.projects.items():
            if str(ref) in (str(pid), ident):
                return pid
        return None

    def errors(self, issue: dict[str, Any], creating: bool) -> list[str]:
        errors = []
        if creating and self.project(issue.get("project_id")) is None:
            errors.append("Project cannot be blank")
        if (creating or "subject" in issue) and not str(issue.get("subject") or "").strip():
            errors.append("Subject cannot be blank")
        for key, (label, known) in _REFS.items():
            if key in issue and issue[key] not in known:
                errors.append(f"{label.title()} is not included in the list")
        return errors

    def apply(self, record: dict[str, Any], issue: dict[str, Any]) -> None:
        record.update({k: issue[k] for k in _PLAIN if k in issue})
        for key, (label, known) in _REFS.items():
            if key in issue:
                record[label] = {"id": issue[key], "name": known[issue[key]]}
        if "assigned_to_id" in issue:
            record["assigned_to"] = {"id": issue["assigned_to_id"], "name": f"User {issue['assigned_to_id']}"}
        fields = {f["id"]: f for f in record["custom_fields"]}
        for cf in issue.get("custom_fields") or []:
            fields[cf["id"]] = {"id": cf["id"], "name": f"Field {cf['id']}", "value": cf["value"]}
        record["custom_fields"] = list(fields.values())
        record["updated_on"] = _now()

    def create(self, issue: dict[str, Any]) -> dict[str, Any]:
        pid, iid = self.project(issue["project_id"]), next(self._ids)
        record: dict[str, Any] = {
            "id": iid, "project": {"id": pid, "name": self.projects[pid]}, "tracker": {"id": 1, "name": "Bug"},
            "status": {"id": 1, "name": "New"}, "priority": {"id": 2, "name": "Normal"},
            "author": {"id": 1, "name": "API user"}, "subject": "", "description": "", "custom_fields": [],
            "created_on": _now(), "journals": [],
        }
        self.apply(record, issue)
        self.issues[iid] = record
        return record

    def matches(self, record: dict[str, Any], query: dict[str, str]) -> bool:
        status = query.get("status_id", "open")
        closed = record["status"]["id"] in CLOSED
        if status == "open" and closed or status == "closed" and not closed:
            return False
        if status.isdigit() and int(status) != record["status"]["id"]:
            return False
        if "project_id" in query and self.project(query["project_id"]) != record["project"]["id"]:
            return False
        values = {f"cf_{f['id']}": str(f["value"]) for f in record["custom_fields"]}
        for key, wanted in query.items():
            if key.startswith("cf_") and values.get(key) != wanted:
                return False
        text = query.get("description", "")
        return not text.startswith("~") or text[1:].lower() in (record["description"] or "").lower()


def _public(record: dict[str, Any], journals: bool) -> dict[str, Any]:
    return {k: v for k, v in record.items() if journals or k != "journals"}


def make_redmine_app(state: RedmineState) -> Starlette:
    """The fake's Starlette app; ``state`` holds the data for tests to inspect."""

    async def guarded(request: Request) -> tuple[Response | None, Any]:
        state.requests.append((request.method, request.url.path, dict(request.headers)))
        key = request.headers.get("x-redmine-api-key") or request.query_params.get("key")
        if key != state.api_key:
            return Response(status_code=401, headers={"www-authenticate": 'Basic realm="Redmine API"'}), None
        if request.method not in ("PUT", "POST"):
            return None, None
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json(422, {"errors": ["Invalid JSON body"]}), None
        if not isinstance(body, dict) or not isinstance(body.get("issue"), dict):
            return _json(422, {"errors": ["Expected {\"issue\": {...}}"]}), None
        return None, body["issue"]

    async def issues(request: Request) -> Response:
        refused, issue = await guarded(request)
        if refused:
            return refused
        if request.method == "GET":
            query = dict(request.query_params)
            found = [_public(r, False) for r in state.issues.values() if state.matches(r, query)]
            limit = int(query.get("limit", 25))
            return _json(200, {"issues": found[:limit], "total_count": len(found), "offset": 0, "limit": limit})
        if errors := state.errors(issue, creating=True):
            return _json(422, {"errors": errors})
        record = state.create(issue)
        return _json(201, {"issue": _public(record, False)})

    async def one(request: Request) -> Response:
        refused, issue = await guarded(request)
        if refused:
            return refused
        record = state.issues.get(request.path_params["id"])
        if record is None:
            return Response(status_code=404)
        if request.method == "GET":
            return _json(200, {"issue": _public(record, "journals" in request.query_params.get("include", ""))})
        if errors := state.errors(issue, creating=False):
            return _json(422, {"errors": errors})
        state.apply(record, issue)
        if issue.get("notes"):
            record["journals"].append({"id": len(record["journals"]) + 1, "notes": issue["notes"],
                                       "private_notes": bool(issue.get("private_notes")), "created_on": _now()})
        return Response(status_code=204)

    return Starlette(routes=[
        Route("/issues.json", issues, methods=["GET", "POST"]),
        Route("/issues/{id:int}.json", one, methods=["GET", "PUT"]),
    ])
