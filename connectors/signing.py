"""Webhook signatures: Standard Webhooks (https://www.standardwebhooks.com/) and GitHub style.

Standard Webhooks: the sender signs ``"{webhook-id}.{webhook-timestamp}.{body}"`` with
HMAC-SHA256 under a secret written ``whsec_<base64>`` and sends ``webhook-signature:
v1,<base64>`` (several space-separated signatures allowed, for secret rotation).

GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` under the raw secret.

Every comparison is constant-time (``hmac.compare_digest``). Failures raise
:class:`bus.errors.VerificationError` saying exactly what is wrong, never the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from functools import lru_cache

from bus.errors import VerificationError

__all__ = [
    "GITHUB_SIGNATURE",
    "WEBHOOK_ID",
    "WEBHOOK_SIGNATURE",
    "WEBHOOK_TIMESTAMP",
    "decode_secret",
    "sign",
    "sign_github",
    "verify",
    "verify_github",
]

WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
GITHUB_SIGNATURE = "x-hub-signature-256"
SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, padding too)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise ValueError(
            "webhook secret is not valid base64 after the 'whsec_' prefix; "
            "use the secret exactly as the sender shows it (e.g. 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')"
        ) from None
    if not key:
        raise ValueError("webhook secret is empty; set the sender's 'whsec_...' secret")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64 HMAC-SHA256>``."""
    return "v1," + base64.b64encode(_digest(_key(secret), msg_id, str(timestamp), body)).decode()


# Each message is checked under one of a few secrets: decode each once, not per message.
_key = lru_cache(maxsize=64)(decode_secret)


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = 300,
) -> None:
    """Raise VerificationError unless ``body`` carries a valid Standard Webhooks signature.

    ``now`` is the receiver's clock (seconds since the epoch); the message timestamp must be
    within ``tolerance`` seconds of it either way (replay protection).
    """
    hdrs = _lower(headers)
    missing = [h for h in (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE) if not hdrs.get(h)]
    if missing:
        raise VerificationError(
            f"missing header(s) {', '.join(missing)}: the sender must sign as Standard Webhooks "
            "(webhook-id, webhook-timestamp, webhook-signature)"
        )
    msg_id, ts_text, sig_header = hdrs[WEBHOOK_ID], hdrs[WEBHOOK_TIMESTAMP], hdrs[WEBHOOK_SIGNATURE]
    if not (ts_text.isascii() and ts_text.isdigit()):
        raise VerificationError(
            f"bad timestamp {ts_text[:40]!r} in webhook-timestamp: expected integer seconds since the epoch"
        )
    age = now - int(ts_text)
    if age > tolerance:
        raise VerificationError(
            f"timestamp too old: {age:.0f} s before now, tolerance is {tolerance:g} s "
            "(a replay, or the sender's clock is wrong)"
        )
    if -age > tolerance:
        raise VerificationError(
            f"timestamp too new: {-age:.0f} s ahead of now, tolerance is {tolerance:g} s "
            "(the sender's or this host's clock is wrong)"
        )
    expected = _digest(_key(secret), msg_id, ts_text, body)
    checked = 0
    for versioned in sig_header.split():
        version, _, value = versioned.partition(",")
        if version != "v1":
            continue  # other schemes (v1a asymmetric) are not ours to check
        checked += 1
        try:
            candidate = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, candidate):
            return
    raise VerificationError(
        f"no matching signature: {checked} v1 signature(s) checked "
        "(is the secret right? was the body changed on the way?)"
    )


def sign_github(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value: ``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise VerificationError unless ``X-Hub-Signature-256`` matches ``body``."""
    given = _lower(headers).get(GITHUB_SIGNATURE, "")
    if not given:
        raise VerificationError("missing header X-Hub-Signature-256: is the webhook secret set at the sender?")
    if not given.startswith("sha256="):
        raise VerificationError("malformed X-Hub-Signature-256: expected 'sha256=<hex digest>'")
    if not hmac.compare_digest(sign_github(secret, body).encode(), given.strip().encode()):
        raise VerificationError(
            "X-Hub-Signature-256 does not match the body (is the secret right? was the body changed?)"
        )
