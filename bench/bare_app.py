"""The baseline for bench/ingress.py: a bare Starlette endpoint on uvicorn, no bus.

It reads the same JSON body, applies the same three-field mapping by hand and answers 202 —
no signature check, no durable write. Served like tieline (uvicorn, uvloop, httptools):
``.venv/bin/python -m uvicorn bare_app:app --app-dir bench --port P --no-access-log``.
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def hook(request: Request) -> Response:
    body = orjson.loads(await request.body())
    data = body.get("data") or {}
    mapped = {"order": data.get("id"), "total": data.get("total", 0), "sent": data.get("sent")}
    return Response(orjson.dumps({"accepted": [mapped["order"]]}), 202, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/hooks/{connector}", hook, methods=["POST"]),
                        Route("/healthz", healthz, methods=["GET"])])
