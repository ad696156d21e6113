"""The ``twilio_sms`` connector: ``send_sms`` out; status callbacks and incoming messages in.

Looked up:
* Message resource: https://www.twilio.com/docs/messaging/api/message-resource (POST
  /2010-04-01/Accounts/{AccountSid}/Messages.json form-encoded: To, From | MessagingServiceSid,
  Body, StatusCallback; GET the same path lists messages newest first, filters To, From,
  DateSent, DateSent<, DateSent>, PageSize — twilio-python ``rest/api/v2010/account/message``).
* Webhooks: https://www.twilio.com/docs/usage/webhooks/messaging-webhooks (status callbacks:
  MessageSid, MessageStatus queued/sent/delivered/undelivered/failed..., ErrorCode; incoming
  messages: MessageSid, From, To, Body, NumMedia, SmsStatus=received).

Events: ``sms.status`` (dedupe ``MessageSid:MessageStatus``; ``idempotency_key`` is the
``tl_key`` we put in the StatusCallback URL) and ``sms.received`` (dedupe ``MessageSid``).

Sends without double SMS. Twilio has no idempotency key for sends, so a failure after which
Twilio may have created the message anyway (read timeout, dropped connection, 5xx) is
*reconciled* before anything is sent again. Right after such a failure, and before sending
on any retry (``ctx.attempt > 1``, or a try of the same idempotency key seen by this
process), we list ``Messages.json?To=..&From=..&PageSize=50`` and take the newest outbound
message with the same To, From (or MessagingServiceSid) and Body created since the first try
(remembered in memory; after a restart, the last ``reconcile_window`` seconds). Found: it is
returned (``reconciled: true``) and nothing is sent. Not found: the retry sends. We filter on
``date_created`` ourselves: ``DateSent`` filters miss messages still queued (``date_sent``
is null until the carrier takes them).

Limits: (1) an identical message (same To, sender and Body) sent by someone else inside the
window is taken for ours, and ours is not sent; (2) a message Twilio created but does not
list yet is missed and sent twice; (3) only the newest 50 messages for that To/From are
searched; (4) a Body that Twilio rewrites (smart encoding, link shortening on a Messaging
Service) does not match, so it is sent twice. The ``tl_key`` in the StatusCallback URL lets
flows correlate callbacks, but Twilio's API does not return that URL, so it cannot be used
for the lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from connectors.base import (
    CallContext,
    ConnectorDeps,
    InboundEvent,
    InboundRequest,
    PayloadError,
    PermanentError,
    RetryableError,
    action,
)
from connectors.twilio.common import SECRET_FIELDS, SETTINGS_PROPERTIES, TwilioConnector

KEY_PARAM = "tl_key"
CLOCK_SKEW = 300.0  # seconds of slack between our clock and Twilio's date_created
_REMEMBERED = 10_000  # first-try times kept in memory, oldest dropped first
_RESULT_KEYS = ("sid", "status", "to", "from", "messaging_service_sid", "date_created", "error_code")

_STATUS_BODY = {
    "type": "object",
    "required": ["message_sid", "message_status"],
    "properties": {
        "message_sid": {"type": "string", "description": "SM... / MM..., the message"},
        "message_status": {"type": "string", "description": "queued, sent, delivered, undelivered, failed, read, ..."},
        "error_code": {"type": ["integer", "null"], "description": "Twilio error code on undelivered/failed"},
        "to": {"type": "string"},
        "from": {"type": "string"},
        "account_sid": {"type": "string"},
        "idempotency_key": {"type": "string", "description": "the send_sms step's key (tl_key in the callback URL)"},
    },
    "additionalProperties": True,
}
_RECEIVED_BODY = {
    "type": "object",
    "required": ["message_sid", "from", "to", "body"],
    "properties": {
        "message_sid": {"type": "string"},
        "from": {"type": "string", "description": "sender, E.164"},
        "to": {"type": "string", "description": "our Twilio number"},
        "body": {"type": "string", "description": "the text"},
        "num_media": {"type": ["integer", "null"]},
        "account_sid": {"type": "string"},
    },
    "additionalProperties": True,
}


@dataclass(frozen=True, slots=True)
class SmsOptions:
    """The SMS-only settings, parsed once (the shared ones are in ``TwilioSettings``)."""

    status_callback: str = ""
    reconcile_window: float = 86400.0


class TwilioSmsConnector(TwilioConnector):
    """Twilio Messaging: send SMS without double sends; signed status and incoming-message webhooks."""

    type_name = "twilio_sms"
    description = "Twilio SMS: send_sms (reconciled, never blindly resent); status callbacks and incoming messages."
    secret_fields = SECRET_FIELDS
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["account_sid", "auth_token"],
        "properties": {
            **SETTINGS_PROPERTIES,
            "status_callback": {"type": "string", "pattern": "^https?://", "description": "default StatusCallback URL for send_sms (tl_key=<idempotency key> is appended)"},
            "reconcile_window": {"type": "number", "exclusiveMinimum": 0, "description": "seconds back to look for an already-sent message when the first try is not remembered (default 86400)"},
        },
    }
    events = {"sms.status": _STATUS_BODY, "sms.received": _RECEIVED_BODY}
    _int_params = frozenset({"ErrorCode", "NumMedia", "NumSegments"})

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.options = SmsOptions(settings.get("status_callback", ""), float(settings.get("reconcile_window", 86400)))
        self._first_try: OrderedDict[str, float] = OrderedDict()

    # ----- inbound ---------------------------------------------------------------------
    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        params = self.params(request)
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        status = params.get("MessageStatus") or params.get("SmsStatus") or ""
        if not sid:
            raise PayloadError(f"connector {self.name!r}: not a Twilio messaging webhook: MessageSid is missing")
        body = self.snake_body(params)
        if status in ("received", "receiving") or (not status and "Body" in params):
            return [InboundEvent("sms.received", body, dedupe_key=sid)]
        if not status:
            raise PayloadError(f"connector {self.name!r}: webhook for {sid} has neither MessageStatus nor Body")
        key = request.query.get(KEY_PARAM)
        if key:
            body["idempotency_key"] = key
        return [InboundEvent("sms.status", body, dedupe_key=f"{sid}:{status}")]

    # ----- outbound --------------------------------------------------------------------
    @action(
        "send_sms",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["to", "body"],
            "properties": {
                "to": {"type": "string", "minLength": 1, "description": "recipient, E.164 (+14155550100)"},
                "from": {"type": "string", "minLength": 1, "description": "a Twilio number or sender ID"},
                "messaging_service_sid": {"type": "string", "pattern": "^MG[0-9a-fA-F]{32}$"},
                "body": {"type": "string", "minLength": 1, "maxLength": 1600},
                "status_callback": {"type": "string", "pattern": "^https?://", "description": "overrides settings.status_callback"},
            },
        },
        "Send an SMS. Result: {sid, status, to, from, messaging_service_sid, date_created, error_code, reconciled}.",
    )
    async def send_sms(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """POST Messages.json, reconciling first when an earlier try may have sent it (see module doc).

        Returns ``{sid, status, to, from, messaging_service_sid, date_created, error_code,
        reconciled}``; ``reconciled`` is true when an earlier try's message was found and
        returned instead of sending again.
        """
        if not payload.get("from") and not payload.get("messaging_service_sid"):
            raise PermanentError(
                f"connector {self.name!r} action 'send_sms' at {ctx.step}: input of action 'send_sms' "
                "is invalid: from: give 'from' or 'messaging_service_sid'"
            )
        key = ctx.idempotency_key
        tried_before = ctx.attempt > 1 or key in self._first_try
        since = self._since(key, ctx.attempt)
        if tried_before:
            found = await self._find_sent(payload, ctx, since)
            if found is not None:
                self._first_try.pop(key, None)
                return _result(found, reconciled=True)
        try:
            message = await self.rest("POST", "Messages.json", ctx, "send_sms", data=self._form(payload, key))
        except RetryableError as err:
            if not (isinstance(err.detail, dict) and err.detail.get("ambiguous")):
                raise
            try:
                found = await self._find_sent(payload, ctx, since)
            except (RetryableError, PermanentError) as lookup:
                err.args = (f"{err.args[0]}; and checking whether it was sent failed: {lookup.args[0]}",)
                raise err from None
            if found is None:
                raise
            self._first_try.pop(key, None)
            return _result(found, reconciled=True)
        except PermanentError:
            self._first_try.pop(key, None)
            raise
        self._first_try.pop(key, None)
        return _result(message, reconciled=False)

    def _form(self, payload: Mapping[str, Any], key: str) -> dict[str, str]:
        form = {"To": payload["to"], "Body": payload["body"]}
        if payload.get("from"):
            form["From"] = payload["from"]
        if payload.get("messaging_service_sid"):
            form["MessagingServiceSid"] = payload["messaging_service_sid"]
        callback = payload.get("status_callback") or self.options.status_callback
        if callback:
            form["StatusCallback"] = str(httpx.URL(callback).copy_add_param(KEY_PARAM, key))
        return form

    def _since(self, key: str, attempt: int) -> float:
        """Start of the window to search: the first try of ``key`` (remembered now if new)."""
        now = self.deps.clock()
        first = self._first_try.get(key)
        if first is None:
            self._first_try[key] = first = now
            while len(self._first_try) > _REMEMBERED:
                self._first_try.popitem(last=False)
            if attempt > 1:  # tried before, by a process that is gone: fall back to the window
                return now - self.options.reconcile_window
        return first - CLOCK_SKEW

    async def _find_sent(self, payload: Mapping[str, Any], ctx: CallContext, since: float) -> dict[str, Any] | None:
        """The newest outbound message matching ``payload`` created since ``since``, or None."""
        query = {"To": payload["to"], "PageSize": "50"}
        if payload.get("from"):
            query["From"] = payload["from"]
        listing = await self.rest("GET", "Messages.json", ctx, "send_sms (reconcile)", query=query)
        for msg in listing.get("messages") or []:
            if (
                msg.get("to") == payload["to"]
                and msg.get("body") == payload["body"]
                and str(msg.get("direction", "")).startswith("outbound")
                and (not payload.get("from") or msg.get("from") == payload["from"])
                and (not payload.get("messaging_service_sid")
                     or msg.get("messaging_service_sid") == payload["messaging_service_sid"])
                and _created(msg) >= since
            ):
                return msg
        return None


def _created(msg: Mapping[str, Any]) -> float:
    try:
        return parsedate_to_datetime(str(msg.get("date_created"))).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _result(message: Mapping[str, Any], *, reconciled: bool) -> dict[str, Any]:
    return {**{k: message.get(k) for k in _RESULT_KEYS}, "reconciled": reconciled}
