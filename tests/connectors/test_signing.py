"""Webhook signatures: Standard Webhooks (interop with the reference package) and GitHub."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from bus.errors import VerificationError
from connectors import signing

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
BODY = b'{"type":"call.ended","data":{"id":"c-1","caller":"+4420 7946 0000"}}'


def ref_headers(secret: str, msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    """Headers as the reference implementation signs them."""
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_sign_equals_reference():
    """Our signature is byte-for-byte the reference package's."""
    ts = 1_700_000_000
    assert signing.sign(SECRET, "msg_1", ts, BODY) == ref_headers(SECRET, "msg_1", ts, BODY)["webhook-signature"]


def test_verify_accepts_reference_signed_message():
    """A message signed by standardwebhooks verifies with ours (header names in any case)."""
    now = int(time.time())
    headers = {k.title(): v for k, v in ref_headers(SECRET, "msg_2", now, BODY).items()}
    signing.verify(SECRET, headers, BODY, now=now)


def test_reference_accepts_our_signature():
    """A message signed by us verifies with standardwebhooks."""
    now = int(time.time())
    headers = {
        "webhook-id": "msg_3",
        "webhook-timestamp": str(now),
        "webhook-signature": signing.sign(SECRET, "msg_3", now, BODY),
    }
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "call.ended",
        "data": {"id": "c-1", "caller": "+4420 7946 0000"},
    }


def test_any_of_several_signatures_may_match():
    """During secret rotation a header carries several signatures; one match is enough."""
    now = 1_700_000_000
    good = signing.sign(SECRET, "m", now, BODY)
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(now),
        "webhook-signature": f"v1,bm90IGl0 v1a,AAAA {signing.sign(OTHER, 'm', now, BODY)} {good}",
    }
    signing.verify(SECRET, headers, BODY, now=now)


NOW = 1_700_000_000


def _signed(**override: str) -> dict[str, str]:
    headers = ref_headers(SECRET, "msg_x", NOW, BODY)
    headers.update(override)
    return {k: v for k, v in headers.items() if v != "-"}


@pytest.mark.parametrize(
    ("headers", "body", "now", "reason"),
    [
        (_signed(**{"webhook-id": "-"}), BODY, NOW, "missing header.*webhook-id"),
        (_signed(**{"webhook-timestamp": "-", "webhook-signature": "-"}), BODY, NOW,
         "missing header.*webhook-timestamp, webhook-signature"),
        (_signed(**{"webhook-timestamp": "yesterday"}), BODY, NOW, "bad timestamp 'yesterday'"),
        (_signed(**{"webhook-timestamp": "1.7e9"}), BODY, NOW, "bad timestamp"),
        (_signed(), BODY, NOW + 301, "too old: 301 s"),
        (_signed(), BODY, NOW - 301, "too new: 301 s"),
        (ref_headers(OTHER, "msg_x", NOW, BODY), BODY, NOW, "no matching signature: 1 v1"),
        (_signed(), BODY + b" ", NOW, "no matching signature"),
        (_signed(**{"webhook-id": "msg_y"}), BODY, NOW, "no matching signature"),
        (_signed(**{"webhook-signature": "v1,***not base64***"}), BODY, NOW, "no matching signature"),
        (_signed(**{"webhook-signature": "v2,abc"}), BODY, NOW, "0 v1 signature"),
    ],
    ids=[
        "missing-id", "missing-two", "bad-timestamp", "float-timestamp", "too-old", "too-new",
        "wrong-secret", "tampered-body", "other-id", "garbled-signature", "unknown-version",
    ],
)
def test_verify_rejects_with_precise_reason(headers, body, now, reason):
    """Each kind of bad request is refused with a reason saying what is wrong."""
    with pytest.raises(VerificationError, match=reason):
        signing.verify(SECRET, headers, body, now=now)


def test_tolerance_is_configurable():
    """A wider tolerance accepts an older message; the boundary itself is inside the window."""
    signing.verify(SECRET, _signed(), BODY, now=NOW + 300)
    signing.verify(SECRET, _signed(), BODY, now=NOW + 900, tolerance=900)


@pytest.mark.parametrize(
    "secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS"],
    ids=["no-prefix", "unpadded"],
)
def test_secret_forms_match_reference(secret):
    """A secret without the whsec_ prefix or without padding is read like the reference does."""
    assert signing.sign(secret, "m", NOW, BODY) == Webhook(secret).sign(
        "m", datetime.fromtimestamp(NOW, tz=UTC), BODY.decode()
    )


@pytest.mark.parametrize("secret", ["whsec_!!!", "whsec_"], ids=["not-base64", "empty"])
def test_bad_secret_is_refused(secret):
    """A secret that is not base64 (or empty) is a ValueError telling the expected form."""
    with pytest.raises(ValueError, match="whsec_"):
        signing.decode_secret(secret)


GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"  # GitHub's docs


def test_github_signature_matches_documented_vector():
    """sign_github reproduces the example from GitHub's webhook documentation, and verifies it."""
    assert signing.sign_github(GH_SECRET, GH_BODY) == GH_SIG
    signing.verify_github(GH_SECRET, {"X-Hub-Signature-256": GH_SIG}, GH_BODY)


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, GH_BODY, "missing header X-Hub-Signature-256"),
        ({"x-hub-signature-256": GH_SIG.removeprefix("sha256=")}, GH_BODY, "malformed"),
        ({"x-hub-signature-256": GH_SIG}, GH_BODY + b"!", "does not match"),
        ({"x-hub-signature-256": "sha256=" + "0" * 64}, GH_BODY, "does not match"),
    ],
    ids=["missing", "no-prefix", "tampered-body", "wrong-digest"],
)
def test_github_rejects_with_reason(headers, body, reason):
    """A missing, malformed or wrong GitHub signature is refused with its reason."""
    with pytest.raises(VerificationError, match=reason):
        signing.verify_github(GH_SECRET, headers, body)
