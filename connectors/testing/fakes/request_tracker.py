"""A fake Request Tracker REST2 API (tickets), enforcing what RT enforces.

    state = RTState()                            # token SANDBOX_TOKEN, queues General and Support
    app = with_faults(make_rt_app(state), faults)
    state.interfere(2)                           # the next 2 updates meet a concurrent change
    ... state.tickets[1]["Status"], state.transactions[1]

Routes live under ``/REST/2.0`` (point the connector's base_url at ``<url>/REST/2.0``):
* auth ``Authorization: token <TOKEN>``; else 401 ``{"message": "Unauthorized"}``;
* ``POST /ticket`` → 201 ``{"id", "type": "ticket", "_url"}``; no/unknown Queue → 400 ``{"message"}``;
* ``GET /ticket/{id}`` with ``ETag`` = the id of its latest transaction; 404 ``{"message": "Not Found"}``;
* ``PUT /ticket/{id}``: a stale ``If-Match`` → 412 ``{"message": "Precondition Failed"}``, else 200
  with ``["Ticket 1: Status changed from 'new' to 'open'", ...]``;
* ``POST /ticket/{id}/correspond|comment`` → 201 ``["Correspondence added"]`` / ``["Comments added"]``,
  ``Location: .../transaction/{id}``; JSON Content without ContentType → 400.
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

__all__ = ["SANDBOX_TOKEN", "RTState", "make_rt_app"]

SANDBOX_TOKEN = "1-14-sandboxrttoken"
_FIELDS = ("Subject", "Status", "Priority", "Owner", "Due")
STATUSES = {"new", "open", "stalled", "resolved", "rejected", "deleted"}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json; charset=utf-8")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RTState:
    """Queues, tickets and transactions of one fake RT."""

    def __init__(self, token: str = SANDBOX_TOKEN, queues: tuple[str, ...] = ("General", "Support")):
        self.token = token
        self.queues = {name: i for i, name in enumerate(queues, 1)}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.transactions: dict[int, list[dict[str, Any]]] = {}  # ticket id → its transactions
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) that reached the fake
        self.conflicts = 0  # 412 answers given
        self._interfere = 0
        self._txn = itertools.count(1)
        self._ids = itertools.count(1)

    def interfere(self, n: int = 1) -> None:
        """Before each of the next ``n`` updates, someone else changes the ticket (its ETag moves)."""
        self._interfere += n

    def etag(self, tid: int) -> str:
        return f'"{self.transactions[tid][-1]["id"]}"'

    def record(self, tid: int, kind: str, **data: Any) -> int:
        txn = {"id": next(self._txn), "Type": kind, "Created": _now(), **data}
        self.transactions.setdefault(tid, []).append(txn)
        self.tickets[tid]["LastUpdated"] = txn["Created"]
        return txn["id"]

    def create(self, data: dict[str, Any]) -> int:
        tid = next(self._ids)
        people = data.get("Requestor") or []
        self.tickets[tid] = {
            "id": tid, "Queue": str(data["Queue"]), "Subject": data.get("Subject", ""),
            "Status": data.get("Status", "new"), "Priority": data.get("Priority", 0), "Owner": data.get("Owner", "Nobody"),
            "Requestor": [people] if isinstance(people, str) else list(people),
            "CustomFields": dict(data.get("CustomFields") or {}), "Created": _now(), "LastUpdated": _now(),
        }
        self.record(tid, "Create", Content=data.get("Content"), ContentType=data.get("ContentType"))
        return tid

    def update(self, tid: int, data: dict[str, Any]) -> list[str]:
        ticket, messages = self.tickets[tid], []
        for name in _FIELDS:
            if name in data and data[name] != ticket[name]:
                if name == "Status" and data[name] not in STATUSES:
                    messages.append(f"Status '{data[name]}' isn't a valid status for this ticket.")
                    continue
                messages.append(f"Ticket {tid}: {name} changed from '{ticket[name]}' to '{data[name]}'")
                ticket[name] = data[name]
                self.record(tid, "Set", Field=name)
        for name, value in (data.get("CustomFields") or {}).items():
            ticket["CustomFields"][name] = value
            messages.append(f"{name} {value} added")
            self.record(tid, "CustomField", Field=name)
        return messages

    def view(self, tid: int, base: str) -> dict[str, Any]:
        t = self.tickets[tid]
        def user(name: str) -> dict[str, str]:
            return {"id": name, "type": "user", "_url": f"{base}/user/{name}"}
        return {
            **t, "id": tid, "Queue": {"id": str(self.queues.get(t["Queue"], t["Queue"])), "type": "queue",
                                      "_url": f"{base}/queue/{self.queues.get(t['Queue'])}"},
            "Owner": user(t["Owner"]), "Requestor": [user(r) for r in t["Requestor"]],
            "CustomFields": [{"name": k, "values": v if isinstance(v, list) else [v]} for k, v in t["CustomFields"].items()],
            "_hyperlinks": [{"ref": "self", "type": "ticket", "id": tid, "_url": f"{base}/ticket/{tid}"},
                            {"ref": "correspond", "_url": f"{base}/ticket/{tid}/correspond"},
                            {"ref": "comment", "_url": f"{base}/ticket/{tid}/comment"}],
        }


def make_rt_app(state: RTState) -> Starlette:
    """The fake's Starlette app (routes under /REST/2.0); ``state`` holds the data."""

    def base(request: Request) -> str:
        # root_path carries a Mount's prefix (/sandbox/request_tracker); base_url does not, in Starlette 1.x
        return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}".rstrip("/") + "/REST/2.0"

    async def guarded(request: Request) -> tuple[Response | None, Any]:
        state.requests.append((request.method, request.url.path, dict(request.headers)))
        if request.headers.get("authorization") != f"token {state.token}":
            return _json(401, {"message": "Unauthorized"}), None
        if "id" in request.path_params and request.path_params["id"] not in state.tickets:
            return _json(404, {"message": "Not Found"}), None
        if request.method == "GET":
            return None, None
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("text/"):
            return None, {"Content": raw.decode(), "ContentType": request.headers["content-type"].split(";")[0]}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _json(400, {"message": "malformed JSON string"}), None
        if not isinstance(body, dict):
            return _json(400, {"message": "JSON object must be a HASH"}), None
        return None, body

    async def create(request: Request) -> Response:
        refused, data = await guarded(request)
        if refused:
            return refused
        if not data.get("Queue"):
            return _json(400, {"message": "Could not create ticket. Queue not set"})
        if str(data["Queue"]) not in state.queues and data["Queue"] not in state.queues.values():
            return _json(400, {"message": "Unable to find queue"})
        tid = state.create(data)
        url = f"{base(request)}/ticket/{tid}"
        return _json(201, {"id": str(tid), "type": "ticket", "_url": url}, {"location": url})

    async def ticket(request: Request) -> Response:
        refused, data = await guarded(request)
        if refused:
            return refused
        tid = request.path_params["id"]
        if request.method == "GET":
            return _json(200, state.view(tid, base(request)), {"etag": state.etag(tid)})
        if state._interfere:
            state._interfere -= 1
            state.record(tid, "Comment", Content="a colleague's concurrent change")
        wanted = request.headers.get("if-match")
        if wanted and wanted != "*" and wanted.strip('W/"') != state.etag(tid).strip('"'):
            state.conflicts += 1
            return _json(412, {"message": "Precondition Failed"})
        return _json(200, state.update(tid, data), {"etag": state.etag(tid)})

    async def message(request: Request) -> Response:
        refused, data = await guarded(request)
        if refused:
            return refused
        tid, kind = request.path_params["id"], request.path_params["kind"]
        if kind not in ("correspond", "comment"):
            return _json(404, {"message": "Not Found"})
        if data.get("Content") and not data.get("ContentType"):
            return _json(400, {"message": "ContentType is a required field for application/json"})
        txn = state.record(tid, "Correspond" if kind == "correspond" else "Comment",
                           Content=data.get("Content"), ContentType=data.get("ContentType"), Subject=data.get("Subject"))
        messages = ["Correspondence added" if kind == "correspond" else "Comments added"]
        if data.get("Status"):
            messages += state.update(tid, {"Status": data["Status"]})
        return _json(201, messages, {"location": f"{base(request)}/transaction/{txn}"})

    return Starlette(routes=[
        Route("/REST/2.0/ticket", create, methods=["POST"]),
        Route("/REST/2.0/ticket/{id:int}", ticket, methods=["GET", "PUT"]),
        Route("/REST/2.0/ticket/{id:int}/{kind:str}", message, methods=["POST"]),
    ])
