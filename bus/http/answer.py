"""An HTTP answer as plain data, and the one error shape every route shares.

Framework-free so the webhook fast path (``fast_hooks``) writes the same bytes the Starlette
routes send (``responses.answer_response`` turns one into a Starlette response).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer: status, the encoded body and any headers beyond the content type."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def refusal(status: int, code: str, message: str, details: object = None,
            headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """``{"error": {"code", "message", "details"}}`` with ``status``."""
    body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
    return Answer(status, body, headers)
