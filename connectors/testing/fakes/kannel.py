"""A fake Kannel smsbox: ``/cgi-bin/sendsms`` with Kannel's checks and answers, DLR and MO callbacks.

    state = KannelState()                                   # sandbox user tieline / sandbox-pass
    app = make_kannel_app(state)
    ...                                                     # the connector sends SMS
    await state.deliver_reports(status=1)                   # GET every stored dlr-url, %d → 1
    await state.deliver_mo(get_url, sender="+4915…", receiver="+4989…", text="STOP")

Answers and statuses are Kannel's own (gw/smsbox.c): 202 ``0: Accepted for delivery``,
403 ``Authorization failed for sendsms``, 400 ``Missing receiver number, rejected`` and the
other ``… rejected`` field errors, as ``text/html`` like Kannel. ``answer`` can be set to
``3: Queued for later delivery`` to imitate a queued reply. Routes are relative.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["SANDBOX_PASSWORD", "SANDBOX_USERNAME", "KannelState", "SentSms", "fill_escape_codes", "make_kannel_app"]

SANDBOX_USERNAME = "tieline"
SANDBOX_PASSWORD = "sandbox-pass"
ACCEPTED = "0: Accepted for delivery"
QUEUED = "3: Queued for later delivery"


@dataclass(frozen=True, slots=True)
class SentSms:
    """One message Kannel accepted."""

    id: str
    sender: str
    receiver: str
    text: str
    charset: str
    coding: int
    smsc: str
    dlr_mask: int
    dlr_url: str
    time: int


def fill_escape_codes(pattern: str, codes: dict[str, str]) -> str:
    """Kannel's ``urltrans_fill_escape_codes`` for the given codes: values URL-encoded, ``%%`` → ``%``."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            code = pattern[i + 1]
            out.append("%" if code == "%" else codes.get(code, "%" + code))
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def _enc(value: str) -> str:
    return quote(value, safe="")


@dataclass
class KannelState:
    """What the fake smsbox accepted, and how it answers."""

    username: str = SANDBOX_USERNAME
    password: str = field(default=SANDBOX_PASSWORD, repr=False)
    global_sender: str = ""  # Kannel's global-sender; "" means 'from' is required
    answer: str = ACCEPTED  # or QUEUED
    smsc_id: str = "sandbox"
    requests: int = 0  # sendsms calls, answered or refused
    sent: list[SentSms] = field(default_factory=list)
    reports: list[tuple[str, int]] = field(default_factory=list)  # (dlr url called, HTTP status)

    async def deliver_reports(
        self, status: int = 1, answer: str = "ACK/", client: httpx.AsyncClient | None = None
    ) -> list[int]:
        """GET the dlr-url of every sent message whose dlr-mask asks for ``status``; the HTTP statuses."""
        results = []
        async with _client(client) as http:
            for sms in self.sent:
                if not (sms.dlr_url and sms.dlr_mask & status):
                    continue
                url = fill_escape_codes(sms.dlr_url, {
                    "d": str(status), "A": _enc(answer), "p": _enc(sms.receiver), "P": _enc(sms.sender),
                    "i": _enc(sms.smsc), "T": str(int(time.time())), "F": _enc("smsc-" + sms.id[:8]),
                    "I": sms.id, "t": time.strftime("%Y-%m-%d+%H:%M:%S", time.gmtime()),
                })
                response = await http.get(url)
                self.reports.append((url, response.status_code))
                results.append(response.status_code)
        return results

    async def deliver_mo(
        self, get_url: str, sender: str, receiver: str, text: str, client: httpx.AsyncClient | None = None
    ) -> httpx.Response:
        """Call an sms-service ``get-url`` for one incoming SMS, as Kannel's smsbox does."""
        words = "+".join(_enc(w) for w in text.split())
        url = fill_escape_codes(get_url, {
            "p": _enc(sender), "P": _enc(receiver), "a": words, "b": _enc(text), "i": _enc(self.smsc_id),
            "T": str(int(time.time())), "I": str(uuid.uuid4()), "k": words.split("+")[0] if words else "",
        })
        async with _client(client) as http:
            return await http.get(url)


class _client:
    """An async context giving ``client`` (left open) or a fresh client (closed after)."""

    def __init__(self, client: httpx.AsyncClient | None):
        self._given, self._own = client, None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        self._own = httpx.AsyncClient()
        return self._own

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.aclose()


def _int(value: str | None, default: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        return None


def make_kannel_app(state: KannelState) -> Starlette:
    """Kannel's sendsms interface (GET, or POST with form parameters) over ``state``."""

    def reply(status: int, text: str) -> Response:
        return Response(text, status_code=status, media_type="text/html")

    async def sendsms(request: Request) -> Response:
        state.requests += 1
        args = dict(request.query_params)
        if request.method == "POST":
            args.update({k: str(v) for k, v in (await request.form()).items()})
        user = args.get("username", args.get("user"))
        password = args.get("password", args.get("pass"))
        if user != state.username or password != state.password:
            return reply(403, "Authorization failed for sendsms")
        to = args.get("to")
        if to is None:
            return reply(400, "Missing receiver number, rejected")
        if to == "":
            return reply(400, "Empty receiver number not allowed, rejected")
        sender = args.get("from") or state.global_sender
        if not sender:
            return reply(400, "Sender missing and no global set, rejected")
        dlr_url = args.get("dlr-url", "")
        if dlr_url and not dlr_url.lower().startswith(("http://", "https://")):
            return reply(400, "DLR-URL field misformed, rejected")
        mask, coding = _int(args.get("dlr-mask"), 0), _int(args.get("coding"), 0)
        if mask is None or not -1 <= mask <= 63:
            return reply(400, "DLR-Mask field misformed, rejected")
        if coding is None or not -1 <= coding <= 2:
            return reply(400, "Coding field misformed, rejected")
        for receiver in dict.fromkeys(to.split()):  # Kannel sends once to each space-separated number
            state.sent.append(SentSms(
                id=str(uuid.uuid4()), sender=sender, receiver=receiver, text=args.get("text", ""),
                charset=args.get("charset", ""), coding=coding, smsc=args.get("smsc") or state.smsc_id,
                dlr_mask=max(mask, 0), dlr_url=dlr_url, time=int(time.time()),
            ))
        return reply(202, state.answer)

    return Starlette(routes=[Route("/cgi-bin/sendsms", sendsms, methods=["GET", "POST"])])
