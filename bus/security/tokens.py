"""Access tokens: JWTs per RFC 9068, validated per RFC 8725 (JWT best current practices).

The algorithm comes from configuration only and is the single one accepted on validation, so
``alg: none`` and algorithm confusion (an HS256 token "signed" with the RS256 public key) fail
as any other bad signature does. Keys come from configuration; with none configured
:func:`load_keys` refuses to start unless ``dev_generate_key: true`` says a per-process key
(valid in this process only) is acceptable.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bus.errors import VerificationError
from bus.security.clients import SecuritySettings, SecuritySetupError, SigningSettings

TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "nbf", "jti", "sub", "client_id", "scope")
_MIN_HMAC_BYTES = 32  # RFC 7518 §3.2: an HS256 key must be at least 256 bits
log = structlog.get_logger(__name__)


class TokenError(VerificationError):
    """The bearer token is not acceptable; the message is safe to return to the caller."""


@dataclass(frozen=True, slots=True)
class Keys:
    alg: str
    signing: Any  # bytes for HS256, a private key object otherwise
    verifying: Any  # bytes for HS256, a public key object otherwise


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str


@dataclass(frozen=True, slots=True)
class Claims:
    client_id: str
    scopes: frozenset[str]
    jti: str
    expires_at: int
    raw: dict[str, Any]


def load_keys(signing: SigningSettings) -> Keys:
    """Keys for ``signing``; SecuritySetupError names the missing or wrong setting."""
    if signing.alg == "HS256":
        if signing.key:
            key = signing.key.encode("utf-8")
            if len(key) < _MIN_HMAC_BYTES:
                raise SecuritySetupError(
                    f"security.signing.key: HS256 needs at least {_MIN_HMAC_BYTES} bytes; "
                    "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
            return Keys("HS256", key, key)
        if signing.dev_generate_key:
            log.warning("security.dev_key", detail="per-process signing key: tokens die with this "
                        "process and are not valid on any other worker")
            key = secrets.token_bytes(48)
            return Keys("HS256", key, key)
        raise SecuritySetupError(
            "security.signing.key: no signing key configured; set key: ${TIELINE_JWT_KEY} "
            "(or dev_generate_key: true for a single-process development server)")
    if signing.alg in ("RS256", "ES256"):
        return _asymmetric(signing)
    raise SecuritySetupError(f"security.signing.alg: {signing.alg!r} is not one of HS256, RS256, ES256")


def _asymmetric(signing: SigningSettings) -> Keys:
    want = rsa.RSAPrivateKey if signing.alg == "RS256" else ec.EllipticCurvePrivateKey
    if signing.private_key_file is None:
        if not signing.dev_generate_key:
            raise SecuritySetupError(
                "security.signing.private_key_file: required for " + signing.alg
                + " (or dev_generate_key: true for a single-process development server)")
        log.warning("security.dev_key", detail="per-process signing key; single process only")
        private: Any = (rsa.generate_private_key(65537, 2048) if signing.alg == "RS256"
                        else ec.generate_private_key(ec.SECP256R1()))
        return Keys(signing.alg, private, private.public_key())
    try:
        private = serialization.load_pem_private_key(signing.private_key_file.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecuritySetupError(
            f"security.signing.private_key_file: cannot load {signing.private_key_file}: {exc}") from None
    if not isinstance(private, want) or (signing.alg == "ES256" and private.curve.name != "secp256r1"):
        raise SecuritySetupError(f"security.signing.private_key_file: {signing.private_key_file} "
                                 f"is not a key for {signing.alg} (RS256: RSA, ES256: EC P-256)")
    public: Any = private.public_key()
    if signing.public_key_file is not None:
        try:
            public = serialization.load_pem_public_key(signing.public_key_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise SecuritySetupError(
                f"security.signing.public_key_file: cannot load {signing.public_key_file}: {exc}") from None
        if public.public_numbers() != private.public_key().public_numbers():
            raise SecuritySetupError("security.signing.public_key_file: does not match private_key_file")
    return Keys(signing.alg, private, public)


class TokenService:
    """Issues and validates access tokens for one issuer and audience."""

    def __init__(self, settings: SecuritySettings, keys: Keys, *,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._keys = keys
        self._clock = clock
        self._jwt = jwt.PyJWT()

    def issue(self, client_id: str, scopes: Iterable[str]) -> IssuedToken:
        now = int(self._clock())
        ttl = int(self.settings.token_ttl)
        scope = " ".join(sorted(scopes))
        claims = {"iss": self.settings.issuer, "aud": self.settings.audience, "sub": client_id,
                  "client_id": client_id, "scope": scope, "iat": now, "nbf": now,
                  "exp": now + ttl, "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, self._keys.signing, algorithm=self._keys.alg,
                           headers={"typ": TOKEN_TYPE})
        return IssuedToken(token, ttl, scope)

    def validate(self, token: str) -> Claims:
        """Claims of a valid token; TokenError (with a caller-safe reason) for anything else."""
        try:
            decoded = self._jwt.decode_complete(
                token, self._keys.verifying, algorithms=[self._keys.alg],
                audience=self.settings.audience, issuer=self.settings.issuer,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True,
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "strict_aud": True})
        except jwt.PyJWTError as exc:
            raise TokenError(_reason(exc)) from None
        self._check_times(decoded["payload"])
        typ = str(decoded["header"].get("typ", "")).lower()
        if typ not in (TOKEN_TYPE, "application/" + TOKEN_TYPE):  # RFC 9068 §4
            raise TokenError("token type is not at+jwt")
        claims = decoded["payload"]
        if not all(isinstance(claims[k], str) for k in ("sub", "client_id", "scope", "jti")) \
                or claims["sub"] != claims["client_id"]:
            raise TokenError("malformed claims")
        return Claims(claims["client_id"], frozenset(claims["scope"].split()), claims["jti"],
                      int(claims["exp"]), claims)


    def _check_times(self, claims: dict[str, Any]) -> None:
        # Checked here, not by PyJWT, so the clock is injectable (PyJWT reads the wall clock).
        if not all(type(claims[k]) in (int, float) for k in ("exp", "nbf", "iat")):
            raise TokenError("malformed claims")
        now, leeway = self._clock(), self.settings.leeway
        if claims["exp"] <= now - leeway:
            raise TokenError("token expired")
        if claims["nbf"] > now + leeway:
            raise TokenError("token not yet valid")
        if claims["iat"] > now + leeway:
            raise TokenError("token issued in the future")


def _reason(exc: jwt.PyJWTError) -> str:
    # Short, fixed reasons: enough for a client to fix its side, nothing about our keys.
    for kind, reason in ((jwt.InvalidAudienceError, "wrong audience"),
                         (jwt.InvalidIssuerError, "wrong issuer"),
                         (jwt.MissingRequiredClaimError, "missing claim"),
                         (jwt.InvalidAlgorithmError, "algorithm not allowed"),
                         (jwt.InvalidSignatureError, "bad signature")):
        if isinstance(exc, kind):
            return reason
    return "malformed token"
