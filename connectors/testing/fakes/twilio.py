"""A fake Twilio REST API (Messages, Calls) enforcing what Twilio enforces, plus signed callbacks.

    app = make_twilio_app(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)   # app.state.twilio: TwilioState
    app = with_faults(app, faults)
    state = ...; state.messages[sid]["status"]; cb = state.set_message_status(sid, "delivered")
    await client.send(cb.request())                                   # a signed status callback

* auth: HTTP basic ``AccountSid:AuthToken``; else 401 ``{"code": 20003, "message": "Authenticate",
  "more_info": ..., "status": 401}`` (the Account in the path must be the caller's);
* ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form): 21604 'To' required, 21211 invalid
  'To', 21603 'From' required, 21602 body required, 21617 body over 1600 characters → 400;
  created ``queued`` (``accepted`` with a MessagingServiceSid only), ``date_sent`` null
  until :meth:`TwilioState.set_message_status` moves it to sent/delivered;
* ``GET .../Messages.json`` newest first, filters To, From, DateSent, DateSent<, DateSent>,
  PageSize, Page; ``GET .../Messages/{sid}.json`` (404 code 20404);
* the same for ``Calls.json``: 21201 'To' required, 21213 'From' required, 21211 invalid
  'To', 21205 no Url/Twiml/ApplicationSid or a bad Url (the code for a missing Url is our
  reading of https://www.twilio.com/docs/api/errors/21205).

Error codes and messages: https://www.twilio.com/docs/errors (21211 body shape from
https://www.twilio.com/docs/usage/troubleshooting/debugging-your-application). Routes are
relative, so the app works mounted under ``/sandbox/twilio``.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
from starlette.applications import Starlette
from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.twilio.signature import compute_signature, sign_json

__all__ = ["SANDBOX_ACCOUNT_SID", "SANDBOX_AUTH_TOKEN", "SignedCallback", "TwilioState", "make_twilio_app",
           "signed_form_callback", "signed_json_callback"]

SANDBOX_ACCOUNT_SID = "AC" + "0" * 31 + "1"
SANDBOX_AUTH_TOKEN = "sandbox0twilio0auth0token0000000"
API = "2010-04-01"
_E164 = re.compile(r"^(whatsapp:)?\+[1-9]\d{1,14}$")
_CALLABLE = re.compile(r"^(client:|sip:)")
_TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_CALL_EVENT = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}


@dataclass(frozen=True, slots=True)
class SignedCallback:
    """A webhook as Twilio would send it: POST ``url`` with ``headers`` and ``body``."""

    url: str
    headers: Mapping[str, str]
    body: bytes

    def request(self) -> httpx.Request:
        return httpx.Request("POST", self.url, headers=dict(self.headers), content=self.body)


def signed_form_callback(auth_token: str, url: str, params: Mapping[str, str]) -> SignedCallback:
    """A form-encoded webhook signed with ``X-Twilio-Signature``."""
    headers = {"content-type": "application/x-www-form-urlencoded",
               "x-twilio-signature": compute_signature(auth_token, url, params)}
    return SignedCallback(url, headers, urlencode(params).encode())


def signed_json_callback(auth_token: str, url: str, payload: Any) -> SignedCallback:
    """A JSON-body webhook: ``bodySHA256`` added to the URL, signature over the URL only."""
    body = orjson.dumps(payload)
    signed_url, sig = sign_json(auth_token, url, body)
    return SignedCallback(signed_url, {"content-type": "application/json", "x-twilio-signature": sig}, body)


def _error(status: int, code: int, message: str, **extra: Any) -> Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status, **extra}
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json; charset=utf-8")


async def _form(request: Request) -> ImmutableMultiDict:
    """The form body, parsed without python-multipart (Twilio takes urlencoded forms only)."""
    return ImmutableMultiDict(parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True))


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json; charset=utf-8")


@dataclass
class TwilioState:
    """Messages and calls of one fake Twilio account, and the requests it saw."""

    account_sid: str
    auth_token: str = field(repr=False)
    clock: Callable[[], float] = time.time
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks: dict[str, str] = field(default_factory=dict)  # resource sid → StatusCallback URL
    call_events: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, resource), e.g. ("POST", "Messages.json")

    def reset(self) -> None:
        """Forget every message, call and request (tests sharing one server call this between tests)."""
        for store in (self.messages, self.calls, self.callbacks, self.call_events):
            store.clear()
        self.requests.clear()
        self.clock = time.time

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def uri(self, resource: str) -> str:
        return f"/{API}/Accounts/{self.account_sid}/{resource}"

    # ----- driving the fake from tests and the sandbox -----------------------------------
    def set_message_status(self, sid: str, status: str, error_code: int | None = None) -> SignedCallback | None:
        """Move a message on (sent, delivered, failed...); the signed StatusCallback if it has one."""
        msg = self.messages[sid]
        stamp = format_datetime(self.now())
        msg.update(status=status, date_updated=stamp, error_code=error_code)
        if status in ("sent", "delivered", "undelivered", "read") and msg["date_sent"] is None:
            msg["date_sent"] = stamp
        url = self.callbacks.get(sid)
        if not url:
            return None
        params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid, "From": msg["from"] or "",
                  "To": msg["to"], "MessageStatus": status, "SmsStatus": status, "ApiVersion": API}
        if msg["messaging_service_sid"]:
            params["MessagingServiceSid"] = msg["messaging_service_sid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return signed_form_callback(self.auth_token, url, params)

    def set_call_status(self, sid: str, status: str, duration: int | None = None) -> SignedCallback | None:
        """Move a call on; the signed status callback if it asked for that event."""
        call = self.calls[sid]
        call.update(status=status, date_updated=format_datetime(self.now()))
        if duration is not None:
            call["duration"] = str(duration)
        url = self.callbacks.get(sid)
        event = _CALL_EVENT.get(status) or ("completed" if status in _TERMINAL else "")
        if not url or event not in self.call_events.get(sid, []):
            return None
        call["sequence"] += 1
        params = {"CallSid": sid, "AccountSid": self.account_sid, "From": call["from"], "To": call["to"],
                  "Direction": call["direction"], "CallStatus": status, "ApiVersion": API,
                  "CallbackSource": "call-progress-events", "SequenceNumber": str(call["sequence"] - 1),
                  "Timestamp": format_datetime(self.now())}
        if duration is not None:
            params["CallDuration"] = str(duration)
        return signed_form_callback(self.auth_token, url, params)

    def incoming_sms(self, url: str, from_: str, to: str, body: str) -> SignedCallback:
        """A signed incoming-message webhook, as Twilio posts it to a number's messaging URL."""
        sid = "SM" + uuid.uuid4().hex
        params = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": self.account_sid,
                  "From": from_, "To": to, "Body": body, "NumMedia": "0", "NumSegments": "1",
                  "SmsStatus": "received", "ApiVersion": API}
        return signed_form_callback(self.auth_token, url, params)

    def recording_completed(self, url: str, call_sid: str, duration: int) -> SignedCallback:
        """A signed recording status callback for a finished recording of ``call_sid``."""
        rec = "RE" + uuid.uuid4().hex
        params = {"AccountSid": self.account_sid, "CallSid": call_sid, "RecordingSid": rec,
                  "RecordingUrl": f"https://api.twilio.com{self.uri('Recordings/' + rec)}",
                  "RecordingStatus": "completed", "RecordingDuration": str(duration), "RecordingChannels": "1",
                  "RecordingSource": "RecordVerb", "RecordingStartTime": format_datetime(self.now())}
        return signed_form_callback(self.auth_token, url, params)


def make_twilio_app(account_sid: str = SANDBOX_ACCOUNT_SID, auth_token: str = SANDBOX_AUTH_TOKEN) -> Starlette:
    """The fake; its state is ``app.state.twilio`` (a :class:`TwilioState`)."""
    state = TwilioState(account_sid, auth_token)
    expected = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()

    def guard(request: Request, resource: str) -> Response | None:
        state.requests.append((request.method, resource))
        if request.headers.get("authorization") != expected or request.path_params["account"] != account_sid:
            return _error(401, 20003, "Authenticate", detail="Your AccountSid or AuthToken was incorrect.")
        return None

    async def messages(request: Request) -> Response:
        if denied := guard(request, "Messages.json"):
            return denied
        if request.method == "GET":
            return _listing(state, "messages", state.messages, request)
        form = await _form(request)
        to, from_, mss = form.get("To", ""), form.get("From", ""), form.get("MessagingServiceSid", "")
        body = str(form.get("Body", ""))
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(str(to)):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not from_ and not mss:
            return _error(400, 21603, "A 'From' phone number is required.")
        if not body and not form.get("MediaUrl"):
            return _error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        sid, stamp = "SM" + uuid.uuid4().hex, format_datetime(state.now())
        state.messages[sid] = {
            "account_sid": account_sid, "api_version": API, "body": body, "date_created": stamp,
            "date_sent": None, "date_updated": stamp, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": from_ or None, "messaging_service_sid": mss or None,
            "num_media": "0", "num_segments": str(1 + len(body) // 160), "price": None, "price_unit": "USD",
            "sid": sid, "status": "queued" if from_ else "accepted", "to": to,
            "uri": state.uri(f"Messages/{sid}.json"),
        }
        if form.get("StatusCallback"):
            state.callbacks[sid] = str(form["StatusCallback"])
        return _json(201, state.messages[sid])

    async def calls(request: Request) -> Response:
        if denied := guard(request, "Calls.json"):
            return denied
        if request.method == "GET":
            return _listing(state, "calls", state.calls, request)
        form = await _form(request)
        to, from_, url = str(form.get("To", "")), str(form.get("From", "")), str(form.get("Url", ""))
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not (_E164.match(to) or _CALLABLE.match(to)):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not (url or form.get("Twiml") or form.get("ApplicationSid")):
            return _error(400, 21205, "Url parameter is required.")
        if url and not url.startswith(("http://", "https://")):
            return _error(400, 21205, f"Url is not a valid URL: {url}")
        sid, stamp = "CA" + uuid.uuid4().hex, format_datetime(state.now())
        state.calls[sid] = {
            "sid": sid, "account_sid": account_sid, "to": to, "from": from_, "status": "queued",
            "direction": "outbound-api", "date_created": stamp, "date_updated": stamp, "start_time": None,
            "end_time": None, "duration": None, "price": None, "price_unit": "USD", "api_version": API,
            "queue_time": "0", "uri": state.uri(f"Calls/{sid}.json"), "sequence": 0,
        }
        if form.get("StatusCallback"):
            state.callbacks[sid] = str(form["StatusCallback"])
            state.call_events[sid] = [str(e) for e in form.getlist("StatusCallbackEvent")] or ["completed"]
        return _json(201, _public(state.calls[sid]))

    async def one(request: Request) -> Response:
        kind = request.path_params["kind"]
        store = state.messages if kind == "Messages" else state.calls
        if denied := guard(request, f"{kind}/{{sid}}.json"):
            return denied
        item = store.get(request.path_params["sid"])
        if item is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return _json(200, _public(item))

    base = f"/{API}/Accounts/{{account}}"
    return _app(state, [
        Route(f"{base}/Messages.json", messages, methods=["GET", "POST"]),
        Route(f"{base}/Calls.json", calls, methods=["GET", "POST"]),
        Route(f"{base}/{{kind:str}}/{{sid}}.json", one, methods=["GET"]),
    ])


def _app(state: TwilioState, routes: list[Route]) -> Starlette:
    app = Starlette(routes=routes)
    app.state.twilio = state
    return app


def _public(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "sequence"}


def _when(text: str) -> tuple[datetime, bool]:
    """A DateSent filter value (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ) and whether it is a bare date."""
    if len(text) == 10:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC), True
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC), False


def _date_ok(item: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    filters = {op: query[f"DateSent{op}"] for op in ("", "<", ">") if query.get(f"DateSent{op}")}
    if not filters:
        return True
    if not item.get("date_sent"):
        return False  # not sent yet: no DateSent filter matches it
    sent = parsedate_to_datetime(item["date_sent"])
    for op, text in filters.items():
        when, bare = _when(text)
        day_end = when + timedelta(days=1)
        if op == "" and not (when <= sent < day_end if bare else sent == when):
            return False
        if op == "<" and not (sent < day_end if bare else sent <= when):
            return False
        if op == ">" and sent < when:
            return False
    return True


def _listing(state: TwilioState, key: str, store: Mapping[str, dict[str, Any]], request: Request) -> Response:
    query = request.query_params
    try:
        size = min(int(query.get("PageSize", "50")), 1000)
        page = int(query.get("Page", "0"))
        items = [i for i in reversed(store.values())
                 if all(not query.get(f) or i.get(f.lower()) == query[f] for f in ("To", "From", "Status"))
                 and _date_ok(i, query)]
    except ValueError as exc:
        return _error(400, 20001, f"Invalid query parameter: {exc}")
    chosen = items[page * size:(page + 1) * size]
    uri = state.uri(f"{key.capitalize()}.json")
    return _json(200, {
        key: [_public(i) for i in chosen], "page": page, "page_size": size, "start": page * size,
        "end": page * size + max(len(chosen) - 1, 0), "uri": f"{uri}?{request.url.query}",
        "first_page_uri": f"{uri}?PageSize={size}&Page=0", "previous_page_uri": None,
        "next_page_uri": f"{uri}?PageSize={size}&Page={page + 1}" if len(items) > (page + 1) * size else None,
    })
