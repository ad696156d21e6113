"""One JSON error shape for every refusal: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from bus.http.answer import Answer, refusal


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, code: str, message: str, details: Any = None, **headers: str) -> Response:
    return answer_response(refusal(status, code, message, details, tuple(headers.items())))


def answer_response(answer: Answer) -> Response:
    """A plain answer (``bus.http.answer``) as a Starlette response."""
    return Response(answer.body, answer.status, dict(answer.headers) or None,
                    media_type="application/json")
