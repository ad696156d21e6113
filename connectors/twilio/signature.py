"""``X-Twilio-Signature``: how Twilio signs the webhooks it sends, computed and checked.

Mirrors the official validator, twilio-python ``twilio/request_validator.py`` (read via the
code search; also https://www.twilio.com/docs/usage/webhooks/webhooks-security):

* form POST: HMAC-SHA1 keyed with the Auth Token over the full URL Twilio called, followed by
  every POST parameter sorted by name, each name immediately followed by its value (several
  values of one name: each distinct value, sorted); base64;
* JSON body: the URL carries ``bodySHA256=<hex SHA-256 of the raw body>`` and the signature
  covers the URL only (no parameters);
* Twilio is inconsistent about the port: a signature is accepted when it matches the URL
  with the port removed or with the default port (443/80) added (or the URL exactly as given);
* a request carrying ``X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=HMAC_SHA256``
  was signed with a SharedKey secret and SHA-256 instead.

Every comparison is constant-time. Failures raise :class:`VerificationError` saying what is
wrong, never the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qs, urlparse

from bus.errors import VerificationError

__all__ = [
    "SIGNATURE_HEADER",
    "SETTINGS_HEADER",
    "algorithm_of",
    "body_sha256",
    "compute_signature",
    "sign_json",
    "url_variants",
    "verify_signature",
]

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}

Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def _grouped(params: Params | None) -> dict[str, list[str]]:
    """``params`` as name → list of values, from a dict (str or list values) or (name, value) pairs."""
    grouped: dict[str, list[str]] = {}
    if not params:
        return grouped
    pairs = params.items() if isinstance(params, Mapping) else params
    for name, value in pairs:
        values = [value] if isinstance(value, str) else list(value)
        grouped.setdefault(name, []).extend(values)
    return grouped


def compute_signature(key: str, url: str, params: Params | None = None, algorithm: str = "HMAC_SHA1") -> str:
    """The base64 signature Twilio sends for ``url`` and POST ``params`` (none for JSON bodies)."""
    digest = _HASHES.get(algorithm.upper())
    if digest is None:
        raise ValueError(f"unsupported Twilio signature algorithm {algorithm!r}; expected HMAC_SHA1 or HMAC_SHA256")
    data = url
    grouped = _grouped(params)
    for name in sorted(grouped):
        for value in sorted(set(grouped[name])):
            data += name + value
    return base64.b64encode(hmac.new(key.encode(), data.encode(), digest).digest()).decode()


def body_sha256(body: bytes) -> str:
    """The ``bodySHA256`` query value for a JSON body: hex SHA-256 of the raw bytes."""
    return hashlib.sha256(body).hexdigest()


def sign_json(key: str, url: str, body: bytes) -> tuple[str, str]:
    """``(url with bodySHA256 appended, signature)`` as Twilio sends a JSON-body webhook."""
    signed_url = f"{url}{'&' if '?' in url else '?'}bodySHA256={body_sha256(body)}"
    return signed_url, compute_signature(key, signed_url)


def url_variants(url: str) -> tuple[str, str]:
    """``(without port, with default port)``, built as twilio-python's validator builds them."""
    parsed = urlparse(url)
    if parsed.port:
        with_port = parsed.geturl()
        without_port = parsed._replace(netloc=parsed.netloc.rsplit(":", 1)[0]).geturl()
    else:
        without_port = parsed.geturl()
        default = 443 if parsed.scheme == "https" else 80
        with_port = parsed._replace(netloc=f"{parsed.netloc}:{default}").geturl()
    return without_port, with_port


def algorithm_of(settings_header: str) -> str:
    """The algorithm named in ``X-Twilio-Webhooks-Signature-Settings``; HMAC_SHA1 when absent."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def verify_signature(
    key: str,
    url: str,
    signature: str,
    *,
    params: Params | None = None,
    body: bytes | None = None,
    algorithm: str = "HMAC_SHA1",
) -> None:
    """Raise VerificationError unless ``signature`` is Twilio's for this request.

    Give ``params`` for a form POST, or ``body`` (the raw bytes) for a JSON body whose URL
    carries ``bodySHA256``.
    """
    if not signature:
        raise VerificationError(
            "missing header X-Twilio-Signature: is this request from Twilio? "
            "(Twilio signs every webhook; a proxy may have dropped the header)"
        )
    if algorithm.upper() not in _HASHES:
        raise VerificationError(
            f"X-Twilio-Webhooks-Signature-Settings names algorithm {algorithm[:40]!r}; "
            "only HMAC_SHA1 and HMAC_SHA256 are supported"
        )
    if body is not None:
        given = parse_qs(urlparse(url).query).get("bodySHA256", [""])[0]
        if not given:
            raise VerificationError(
                "JSON webhook without bodySHA256 in its URL: Twilio adds it to JSON-body webhooks; "
                "is public_url missing the query string?"
            )
        if not hmac.compare_digest(body_sha256(body).encode(), given.encode()):
            raise VerificationError("bodySHA256 in the URL does not match the body (was the body changed on the way?)")
        params = None
    expected = signature.strip().encode()
    matched = False
    # The validator's two variants (urlparse may normalise, e.g. drop a bare '?'), and the URL as
    # given; all are checked, no early exit, so timing says nothing.
    for candidate in dict.fromkeys((url, *url_variants(url))):
        matched |= hmac.compare_digest(compute_signature(key, candidate, params, algorithm).encode(), expected)
    if not matched:
        raise VerificationError(
            f"X-Twilio-Signature does not match {_public(url)} (is auth_token right? is public_url "
            "exactly the URL configured at Twilio, scheme, host and path included?)"
        )


def _public(url: str) -> str:
    """``url`` without its query (it may carry correlation keys; the path is enough to debug)."""
    parsed = urlparse(url)
    return parsed._replace(query="", fragment="").geturl()
