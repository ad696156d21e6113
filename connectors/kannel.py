"""The ``kannel`` connector: SMS out through Kannel's sendsms interface, reports and MO SMS in.

Looked up in the Kannel user guide (https://www.kannel.org/download/1.4.5/userguide-1.4.5/
userguide.html, "Kannel HTTP interface" and "Parameters (Escape Codes)") and in Kannel's source
(gw/smsbox.c ``smsbox_req_sendsms``/``delayed_http_reply``, gw/urltrans.c
``urltrans_fill_escape_codes``, gw/dlr.c ``create_dlr_from_msg``):

* ``GET {base_url}/cgi-bin/sendsms?username&password&from&to&text&charset&coding&smsc&dlr-mask&dlr-url``
* answers: ``202 0: Accepted for delivery``, ``202 3: Queued for later delivery``, ``202 Sent.``
  (immediate-sendsms-reply); ``403 Authorization failed for sendsms``; ``400 Missing receiver
  number, rejected`` (and other ``... rejected`` field errors); ``403 Not routable. Do not try
  again.``; ``503 Temporal failure, try again later.``; ``500 Sending failed.``
* DLR values (``%d``): 1 delivered to phone, 2 non-delivered to phone, 4 queued on SMSC,
  8 delivered to SMSC, 16 non-delivered to SMSC. ``%A`` is the SMSC's reply, ``%p`` the phone
  (for a DLR: the receiver of our message; for MO: its sender), ``%P`` the other end, ``%i`` the
  smsc-id, ``%T`` the time as a UNIX timestamp, ``%F`` the SMSC's message id, ``%I`` Kannel's
  message id, ``%a`` the text's words joined by '+' (a space once decoded).

Inbound requests are GETs with query parameters only; they authenticate with an unguessable
token ``t``: for delivery reports ``<key>.<HMAC-SHA256(dlr_secret, key)>`` (base64url, built per
message, so nothing needs storing), for MO messages the static ``mo_token`` configured in
Kannel's ``sms-service`` get-url (see :meth:`KannelConnector.mo_url`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    InboundEvent,
    InboundRequest,
    OwnsHttpClient,
    PayloadError,
    PermanentError,
    VerificationError,
    action,
)
from connectors.http_calls import send as http_send

log = structlog.get_logger(__name__)

__all__ = ["DLR_STATUS", "KannelConnector", "KannelSettings"]

DLR_STATUS = {1: "delivered", 2: "failed", 4: "buffered", 8: "smsc_submit", 16: "smsc_reject"}
_FINAL = {1, 2, 16}  # no further report follows these
# Kannel's escape codes; %-signs are encoded by httpx when the dlr-url is sent as a parameter.
_DLR_QUERY = "status=%d&to=%p&from=%P&ts=%T&smsc=%i&answer=%A&fid=%F"
_MO_QUERY = "from=%p&to=%P&text=%a&ts=%T&smsc=%i&id=%I"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class KannelSettings:
    """The ``kannel`` connector's settings, parsed once. Secrets stay out of repr."""

    base_url: str
    username: str
    password: str = field(repr=False)
    sender: str = ""
    smsc: str = ""
    dlr_mask: int = 31
    public_url: str = ""
    dlr_secret: str = field(default="", repr=False)
    mo_token: str = field(default="", repr=False)
    timeout: float = 10.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> KannelSettings:
        return cls(
            base_url=str(raw["base_url"]).rstrip("/"),
            username=raw["username"],
            password=raw["password"],
            sender=raw.get("from", ""),
            smsc=raw.get("smsc", ""),
            dlr_mask=int(raw.get("dlr_mask", 31)),
            public_url=str(raw.get("public_url", "")).rstrip("/"),
            dlr_secret=raw.get("dlr_secret", ""),
            mo_token=raw.get("mo_token", ""),
            timeout=float(raw.get("timeout", 10)),
        )

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.dlr_secret, self.mo_token) if s]


class KannelConnector(OwnsHttpClient, Connector):
    """SMS through a Kannel smsbox: send_sms out; sms.delivery_report and sms.received in."""

    type_name = "kannel"
    description = "SMS via Kannel's sendsms HTTP interface, with delivery reports and incoming SMS."
    secret_fields = frozenset({"password", "dlr_secret", "mo_token"})
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url", "username", "password"],
        "properties": {
            "base_url": {"type": "string", "pattern": "^https?://", "description": "the smsbox, e.g. http://kannel:13013"},
            "username": {"type": "string", "minLength": 1, "description": "sendsms-user username"},
            "password": {"type": "string", "minLength": 1, "description": "sendsms-user password; from ${ENV}"},
            "from": {"type": "string", "maxLength": 20, "description": "default sender number or alphanumeric id"},
            "smsc": {"type": "string", "description": "default smsc-id to route through (optional)"},
            "dlr_mask": {"type": "integer", "minimum": 0, "maximum": 31,
                         "description": "which delivery reports to ask for: 1+2+4+8+16 = 31 (default); 19 = final only"},
            "public_url": {"type": "string", "pattern": "^https?://",
                           "description": "tieline's public base URL, for the dlr-url and MO get-url (…/hooks/<name>)"},
            "dlr_secret": {"type": "string", "minLength": 16, "description": "key for delivery-report tokens; from ${ENV}"},
            "mo_token": {"type": "string", "minLength": 16, "description": "token in the sms-service get-url; from ${ENV}"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds (default 10)"},
        },
        "dependentRequired": {"dlr_secret": ["public_url"], "mo_token": ["public_url"]},
    }
    _time = {"type": ["string", "null"], "description": "RFC 3339, from Kannel's %T; null if absent"}
    events = {
        "sms.delivery_report": {
            "type": "object",
            "description": "A delivery report for a message sent with send_sms.",
            "required": ["message_key", "status", "status_name", "final", "to", "from"],
            "properties": {
                "message_key": {"type": "string", "description": "the send_sms step's idempotency key"},
                "status": {"type": "integer", "description": "Kannel DLR value: 1, 2, 4, 8 or 16"},
                "status_name": {"enum": [*DLR_STATUS.values(), "unknown"], "description": "status as a word"},
                "final": {"type": "boolean", "description": "true for delivered, failed and smsc_reject"},
                "to": {"type": "string", "description": "the phone the message went to"},
                "from": {"type": "string", "description": "the sender the message went from"},
                "smsc": {"type": ["string", "null"], "description": "smsc-id"},
                "answer": {"type": "string", "description": "the SMSC's reply, e.g. 'ACK/' or 'id:… stat:DELIVRD …'"},
                "smsc_message_id": {"type": ["string", "null"], "description": "the SMSC's id of the message"},
                "timestamp": _time,
            },
        },
        "sms.received": {
            "type": "object",
            "description": "An SMS sent to one of our numbers (MO), from Kannel's sms-service get-url.",
            "required": ["from", "to", "text"],
            "properties": {
                "from": {"type": "string", "description": "the phone that sent it"},
                "to": {"type": "string", "description": "our number it was sent to"},
                "text": {"type": "string", "description": "the message; runs of spaces squeezed to one"},
                "smsc": {"type": ["string", "null"], "description": "smsc-id it arrived on"},
                "message_id": {"type": ["string", "null"], "description": "Kannel's id of the message"},
                "timestamp": _time,
            },
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = KannelSettings.parse(settings)


    # ----- tokens and URLs -------------------------------------------------------------
    def _mac(self, key: str) -> bytes:
        return hmac.new(self.settings.dlr_secret.encode(), key.encode(), hashlib.sha256).digest()

    def dlr_token(self, key: str) -> str:
        """``<base64url key>.<base64url HMAC>``: proves the report is for a message we sent."""
        return f"{_b64(key.encode())}.{_b64(self._mac(key))}"

    def dlr_url(self, key: str) -> str:
        """The dlr-url for one message, with Kannel's escape codes left for Kannel to fill."""
        return f"{self._hook()}?t={self.dlr_token(key)}&{_DLR_QUERY}"

    def mo_url(self) -> str:
        """The get-url to configure in Kannel's ``sms-service`` group for incoming SMS."""
        return f"{self._hook()}?t={quote(self.settings.mo_token, safe='')}&{_MO_QUERY}"

    def _hook(self) -> str:
        return f"{self.settings.public_url}/hooks/{quote(self.name, safe='')}"

    # ----- inbound ---------------------------------------------------------------------
    def _classify(self, request: InboundRequest) -> tuple[str, str]:
        """``("mo", "")`` or ``("dlr", key)``; VerificationError unless the token is ours."""
        token = request.query.get("t", "")
        if not token:
            raise VerificationError(
                f"connector {self.name!r}: missing token 't' in the query; the dlr-url or sms-service "
                "get-url must be the one tieline generated"
            )
        mo = self.settings.mo_token
        if mo and hmac.compare_digest(token.encode(), mo.encode()):
            return "mo", ""
        encoded_key, dot, mac = token.partition(".")
        if self.settings.dlr_secret and dot:
            try:
                key, given = _unb64(encoded_key).decode(), _unb64(mac)
            except (binascii.Error, UnicodeDecodeError, ValueError):
                key, given = "", b""
            if key and hmac.compare_digest(self._mac(key), given):
                return "dlr", key
        raise VerificationError(f"connector {self.name!r}: token 't' is not valid (a forged or old URL?)")

    def verify(self, request: InboundRequest) -> None:
        self._classify(request)

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        kind, key = self._classify(request)
        q = request.query
        if kind == "mo":
            missing = [p for p in ("from", "to") if not q.get(p)]
            if missing:
                raise PayloadError(f"connector {self.name!r}: MO request lacks {', '.join(missing)}; "
                                   f"use the get-url from mo_url()")
            body = {"from": q["from"], "to": q["to"], "text": q.get("text", ""), "smsc": q.get("smsc") or None,
                    "message_id": q.get("id") or None, "timestamp": self._time(q.get("ts"))}
            return [InboundEvent("sms.received", body, dedupe_key=body["message_id"])]
        raw = q.get("status", "")
        if not raw.isdigit():
            raise PayloadError(f"connector {self.name!r}: delivery report has no numeric 'status' (got {raw[:20]!r})")
        status = int(raw)
        body = {
            "message_key": key, "status": status, "status_name": DLR_STATUS.get(status, "unknown"),
            "final": status in _FINAL, "to": q.get("to", ""), "from": q.get("from", ""),
            "smsc": q.get("smsc") or None, "answer": q.get("answer", ""),
            "smsc_message_id": q.get("fid") or None, "timestamp": self._time(q.get("ts")),
        }
        return [InboundEvent("sms.delivery_report", body, dedupe_key=f"{key}:{status}")]

    @staticmethod
    def _time(value: str | None) -> str | None:
        if not value or not value.isdigit():
            return None
        return datetime.fromtimestamp(int(value), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # ----- outbound --------------------------------------------------------------------
    @action(
        "send_sms",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["to", "text"],
            "properties": {
                "to": {"type": "string", "pattern": r"^\+?[0-9][0-9-]{2,30}$", "description": "one phone number"},
                "text": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "message text (UTF-8)"},
                "from": {"type": "string", "minLength": 1, "maxLength": 20, "description": "sender; default settings.from"},
                "smsc": {"type": "string", "minLength": 1, "description": "smsc-id; default settings.smsc"},
                "dlr_mask": {"type": "integer", "minimum": 0, "maximum": 31, "description": "default settings.dlr_mask"},
            },
        },
        "Send one SMS. Returns {status: accepted|queued|sent, answer, message_key, dlr_requested}.",
    )
    async def send_sms(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """GET /cgi-bin/sendsms. ``message_key`` (the idempotency key) comes back in delivery reports.

        Kannel has no idempotency: a timeout after Kannel took the message, then a retry, sends
        the SMS twice. ASCII text goes as GSM 7-bit, anything else as UCS-2 (coding=2).
        """
        s = self.settings
        params: dict[str, str] = {"username": s.username, "password": s.password, "to": payload["to"],
                                  "text": payload["text"], "charset": "UTF-8"}
        sender = payload.get("from") or s.sender
        if sender:
            params["from"] = sender
        if payload.get("smsc") or s.smsc:
            params["smsc"] = payload.get("smsc") or s.smsc
        if not payload["text"].isascii():
            params["coding"] = "2"
        mask = payload.get("dlr_mask", s.dlr_mask)
        dlr = bool(mask and s.public_url and s.dlr_secret)
        if dlr:
            params["dlr-mask"] = str(mask)
            params["dlr-url"] = self.dlr_url(ctx.idempotency_key)
        await self.start()
        assert self._client is not None
        headers = {"traceparent": ctx.traceparent} if ctx.traceparent else {}
        timeout = min(s.timeout, ctx.timeout) if ctx.timeout else s.timeout
        req = self._client.build_request("GET", f"{s.base_url}/cgi-bin/sendsms", params=params,
                                         headers=headers, timeout=timeout)
        response = await http_send(self._client, req, name=self.name, secrets=s.secrets())
        answer = response.text.strip()
        status = ("queued" if answer.startswith("3:") else "sent" if answer.startswith("Sent")
                  else "accepted" if answer.startswith("0:") else None)
        if status is None:  # a 2xx with an unknown answer: do not claim success we cannot read
            raise PermanentError(f"connector {self.name!r} action 'send_sms' at {ctx.step}: "
                                 f"unexpected Kannel answer {answer[:100]!r} (HTTP {response.status_code})")
        return {"status": status, "answer": answer, "message_key": ctx.idempotency_key, "dlr_requested": dlr}
