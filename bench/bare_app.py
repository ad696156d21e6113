"""The baselines for bench/ingress.py: bare Starlette endpoints on uvicorn, no bus.

* ``app`` (server ``bare``): reads the same JSON body, applies the same three-field mapping by
  hand and answers 202 — no signature check, no durable write. The ceiling.
* ``durable_app`` (server ``bare-durable``): the least a durable webhook receiver must do —
  check the Standard Webhooks signature (the bench secret), parse the JSON, insert the message
  into SQLite (WAL, ``synchronous=FULL``, one table keyed by webhook-id so a repeat is found)
  and answer 202 only after its COMMIT. One writer thread commits whatever is waiting as one
  transaction (group commit). ``BARE_DURABLE_DB`` names the database file. The floor: what any
  durable receiver on this stack pays, whatever else it does.

Served like tieline (uvicorn, uvloop, httptools):
``.venv/bin/python -m uvicorn bare_app:app --app-dir bench --port P --no-access-log``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import os
import queue
import sqlite3
import sys
import threading
import time

import orjson
from common import SECRET
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TOLERANCE = 300  # seconds either way, as tieline's webhook connector


async def hook(request: Request) -> Response:
    body = orjson.loads(await request.body())
    data = body.get("data") or {}
    mapped = {"order": data.get("id"), "total": data.get("total", 0), "sent": data.get("sent")}
    return Response(orjson.dumps({"accepted": [mapped["order"]]}), 202, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/hooks/{connector}", hook, methods=["POST"]),
                        Route("/healthz", healthz, methods=["GET"])])


# ----- the durable floor ---------------------------------------------------------------------
class GroupCommit:
    """One writer thread: takes every insert waiting (handed over once per loop iteration), runs
    them in one transaction, COMMITs, then settles their futures with one wake-up of the loop."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._pending: list = []  # inserts made during this loop iteration
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()  # batches for the writer
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS message (id TEXT PRIMARY KEY, event TEXT, "
                         "body BLOB) WITHOUT ROWID")
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def insert(self, msg_id: str, event: str, body: bytes) -> asyncio.Future:
        """A future that becomes True (stored) or False (a repeat) once committed."""
        future = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._hand_over)
        self._pending.append((msg_id, event, body, future))
        return future

    def _hand_over(self) -> None:
        # One wake-up of the writer per loop iteration, not one per request: fewer GIL hand-offs.
        batch, self._pending = self._pending, []
        self._waiting.put(batch)

    def close(self) -> None:
        self._waiting.put(None)
        self._thread.join(10)
        self._db.close()

    def _run(self) -> None:
        while (batch := self._waiting.get()) is not None:
            with contextlib.suppress(queue.Empty):
                while (more := self._waiting.get_nowait()) is not None:
                    batch += more
                self._waiting.put(None)  # close() arrived mid-batch: stop after this one
            try:
                self._db.execute("BEGIN")
                fresh = [self._db.execute("INSERT OR IGNORE INTO message VALUES (?, ?, ?)",
                                          item[:3]).rowcount == 1 for item in batch]
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._loop.call_soon_threadsafe(_fail, batch, exc)
            else:
                self._loop.call_soon_threadsafe(_settle, batch, fresh)


def _settle(batch: list, fresh: list[bool]) -> None:
    for item, stored in zip(batch, fresh, strict=True):
        if not item[3].done():
            item[3].set_result(stored)


def _fail(batch: list, exc: Exception) -> None:
    for item in batch:
        if not item[3].done():
            item[3].set_exception(exc)


_KEY = base64.b64decode(SECRET.removeprefix("whsec_"))


def signed(msg_id: str, ts: str, signatures: str, body: bytes) -> bool:
    """Standard Webhooks: HMAC-SHA256 of ``id.ts.body``; timestamp within TOLERANCE."""
    if not (msg_id and ts.isascii() and ts.isdigit() and abs(time.time() - int(ts)) <= TOLERANCE):
        return False
    expected = base64.b64encode(hmac.new(_KEY, f"{msg_id}.{ts}.".encode() + body,
                                         hashlib.sha256).digest())
    return any(hmac.compare_digest(s[3:].encode(), expected)
               for s in signatures.split() if s.startswith("v1,"))


def _json(status: int, doc: object) -> Response:
    return Response(orjson.dumps(doc), status, media_type="application/json")


async def durable_hook(request: Request) -> Response:
    body = await request.body()
    h = request.headers
    msg_id = h.get("webhook-id", "")
    if not signed(msg_id, h.get("webhook-timestamp", ""), h.get("webhook-signature", ""), body):
        return _json(401, {"error": "bad or missing Standard Webhooks signature"})
    try:
        event = orjson.loads(body)["type"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _json(400, {"error": "body is not a JSON object with a 'type'"})
    stored = await request.app.state.writer.insert(msg_id, str(event), body)
    return _json(202 if stored else 200, {"accepted" if stored else "duplicate": [msg_id]})


@contextlib.asynccontextmanager
async def _writer(app: Starlette):
    # The interpreter settings `tieline run` uses (bus.launch.tune_process), for the same
    # reasons: the writer thread and the loop share the GIL, and each request waiting for its
    # commit holds GC-tracked objects that make the default young collections frequent.
    sys.setswitchinterval(0.001)
    gc.set_threshold(10_000, 10, 10)
    app.state.writer = GroupCommit(os.environ["BARE_DURABLE_DB"], asyncio.get_running_loop())
    try:
        yield
    finally:
        app.state.writer.close()


durable_app = Starlette(routes=[Route("/hooks/{connector}", durable_hook, methods=["POST"]),
                                Route("/healthz", healthz, methods=["GET"])], lifespan=_writer)
