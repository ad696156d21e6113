"""The ``twilio_voice`` connector: call and recording status callbacks in, ``create_call`` out.

Looked up:
* Status callbacks and recording status callbacks: https://www.twilio.com/docs/usage/webhooks/voice-webhooks
  (form POST: CallSid, CallStatus, CallDuration, SequenceNumber, Timestamp, CallbackSource,
  From, To, Direction, ...; recordings: RecordingSid, RecordingUrl, RecordingStatus,
  RecordingDuration, CallSid).
* Call resource: https://www.twilio.com/docs/voice/api/call (POST
  /2010-04-01/Accounts/{AccountSid}/Calls.json, form-encoded: To, From, Url | Twiml,
  StatusCallback, StatusCallbackEvent (repeated), Timeout, Record, RecordingStatusCallback);
  call statuses queued, initiated, ringing, in-progress, completed, busy, failed, no-answer,
  canceled (twilio-python ``rest/api/v2010/account/call``).

Events (body: every Twilio parameter under its snake_case name, ``From`` → ``from``; numbers
as int): ``call.initiated`` (queued/initiated), ``call.ringing``, ``call.answered``
(in-progress), ``call.completed`` (completed, busy, no-answer, failed, canceled: read
``call_status``), ``recording.completed``. Dedupe key: ``CallSid:SequenceNumber`` (or
``CallSid:CallStatus`` without a sequence number); recordings: ``RecordingSid``. Other
statuses (a recording ``in-progress``/``failed``) are acknowledged and dropped with a log line.

Twilio has no idempotency key for calls: an ambiguous failure of ``create_call`` (timeout,
5xx) is retryable and may place a second call. Use a flow retry policy of one attempt if a
double call is worse than none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from connectors.base import (
    CallContext,
    InboundEvent,
    InboundRequest,
    PayloadError,
    PermanentError,
    action,
)
from connectors.twilio.common import SECRET_FIELDS, SETTINGS_PROPERTIES, TwilioConnector

log = structlog.get_logger(__name__)

_STATUS_EVENT = {
    "queued": "call.initiated",
    "initiated": "call.initiated",
    "ringing": "call.ringing",
    "in-progress": "call.answered",
    "answered": "call.answered",
    "completed": "call.completed",
    "busy": "call.completed",
    "no-answer": "call.completed",
    "failed": "call.completed",
    "canceled": "call.completed",
}
# 'duration' is CallDuration (seconds); Twilio's separate 'Duration' parameter, whose unit its
# pages describe inconsistently, is kept apart under a neutral name instead of colliding.
_RENAMES = {"CallDuration": "duration", "Duration": "twilio_duration"}
_URL = {"type": "string", "pattern": "^https?://"}

_CALL_BODY = {
    "type": "object",
    "required": ["call_sid", "call_status"],
    "properties": {
        "call_sid": {"type": "string", "description": "CA..., the call"},
        "call_status": {"enum": sorted(_STATUS_EVENT), "description": "Twilio's CallStatus"},
        "account_sid": {"type": "string"},
        "from": {"type": "string", "description": "caller (E.164, client:..., sip:...)"},
        "to": {"type": "string", "description": "callee"},
        "direction": {"type": "string", "description": "inbound, outbound-api, outbound-dial"},
        "duration": {"type": ["integer", "null"], "description": "seconds (CallDuration), on call.completed"},
        "twilio_duration": {"type": ["integer", "null"], "description": "Twilio's 'Duration' parameter, as sent"},
        "sequence_number": {"type": ["integer", "null"], "description": "order of this call's callbacks"},
        "timestamp": {"type": "string", "description": "RFC 2822 time of the event"},
        "callback_source": {"type": "string"},
        "recording_url": {"type": "string"},
        "recording_sid": {"type": "string"},
    },
    "additionalProperties": True,
}
_RECORDING_BODY = {
    "type": "object",
    "required": ["recording_sid", "call_sid", "recording_status"],
    "properties": {
        "recording_sid": {"type": "string", "description": "RE..., the recording"},
        "recording_url": {"type": "string", "description": "media URL (append .mp3 or .wav)"},
        "recording_status": {"const": "completed"},
        "recording_duration": {"type": ["integer", "null"], "description": "seconds"},
        "recording_channels": {"type": ["integer", "null"]},
        "call_sid": {"type": "string"},
        "account_sid": {"type": "string"},
    },
    "additionalProperties": True,
}


class TwilioVoiceConnector(TwilioConnector):
    """Twilio Programmable Voice: signed call/recording status callbacks; place calls."""

    type_name = "twilio_voice"
    description = "Twilio Voice: call and recording status callbacks (X-Twilio-Signature); create_call."
    secret_fields = SECRET_FIELDS
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["account_sid", "auth_token"],
        "properties": SETTINGS_PROPERTIES,
    }
    events = {
        "call.initiated": _CALL_BODY,
        "call.ringing": _CALL_BODY,
        "call.answered": _CALL_BODY,
        "call.completed": _CALL_BODY,
        "recording.completed": _RECORDING_BODY,
    }
    _int_params = frozenset({"CallDuration", "Duration", "SequenceNumber", "RecordingDuration", "RecordingChannels"})

    def parse(self, request: InboundRequest) -> list[InboundEvent]:
        params = self.params(request)
        body = self.snake_body(params, _RENAMES)
        if params.get("RecordingSid") and params.get("RecordingStatus"):
            if params["RecordingStatus"] != "completed":
                log.info("twilio_recording_status_ignored", connector=self.name, status=params["RecordingStatus"][:40])
                return []
            return [InboundEvent("recording.completed", body, dedupe_key=params["RecordingSid"])]
        call_sid, status = params.get("CallSid", ""), params.get("CallStatus", "")
        if not call_sid or not status:
            raise PayloadError(
                f"connector {self.name!r}: not a Twilio voice callback: CallSid and CallStatus "
                "(or RecordingSid and RecordingStatus) are required"
            )
        name = _STATUS_EVENT.get(status)
        if name is None:
            log.info("twilio_call_status_ignored", connector=self.name, status=status[:40])
            return []
        seq = params.get("SequenceNumber")
        return [InboundEvent(name, body, dedupe_key=f"{call_sid}:{seq if seq else status}")]

    @action(
        "create_call",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["to", "from"],
            "properties": {
                "to": {"type": "string", "minLength": 1, "description": "E.164 number, client:name or sip:uri"},
                "from": {"type": "string", "minLength": 1, "description": "a Twilio number or verified caller ID"},
                "url": {**_URL, "description": "TwiML URL for the call (or give twiml)"},
                "twiml": {"type": "string", "minLength": 1, "description": "inline TwiML (or give url)"},
                "status_callback": {**_URL, "description": "where Twilio posts call status callbacks"},
                "status_callback_event": {
                    "type": "array",
                    "items": {"enum": ["initiated", "ringing", "answered", "completed"]},
                    "uniqueItems": True,
                },
                "timeout": {"type": "integer", "minimum": 5, "maximum": 600, "description": "ring seconds"},
                "record": {"type": "boolean"},
                "recording_status_callback": _URL,
            },
        },
        "Place a call. Result: {sid, status, to, from, direction, date_created, uri}.",
    )
    async def create_call(self, payload: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """POST Calls.json; returns ``{sid, status ('queued'), to, from, direction, date_created, uri}``."""
        if ("url" in payload) == ("twiml" in payload):
            raise PermanentError(
                f"connector {self.name!r} action 'create_call' at {ctx.step}: input of action "
                "'create_call' is invalid: url/twiml: give exactly one of 'url' or 'twiml'"
            )
        fields = {
            "To": payload["to"],
            "From": payload["from"],
            "Url": payload.get("url"),
            "Twiml": payload.get("twiml"),
            "StatusCallback": payload.get("status_callback"),
            "StatusCallbackEvent": list(payload.get("status_callback_event") or []) or None,
            "Timeout": str(payload["timeout"]) if "timeout" in payload else None,
            "Record": ("true" if payload["record"] else "false") if "record" in payload else None,
            "RecordingStatusCallback": payload.get("recording_status_callback"),
        }
        data = {k: v for k, v in fields.items() if v is not None}
        call = await self.rest("POST", "Calls.json", ctx, "create_call", data=data)
        keys = ("sid", "status", "to", "from", "direction", "date_created", "uri")
        return {k: call.get(k) for k in keys}
