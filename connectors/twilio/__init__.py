"""Twilio connectors: ``twilio_voice`` (call status callbacks, create_call) and ``twilio_sms``
(send_sms with reconciliation, status callbacks, incoming messages), sharing the
``X-Twilio-Signature`` check in :mod:`connectors.twilio.signature`."""

from connectors.twilio.sms import TwilioSmsConnector
from connectors.twilio.voice import TwilioVoiceConnector

__all__ = ["TwilioSmsConnector", "TwilioVoiceConnector"]
