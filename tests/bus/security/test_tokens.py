"""Access tokens: RFC 9068 shape, RFC 8725 validation, key loading."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bus.security.clients import SecuritySettings, SecuritySetupError, SigningSettings
from bus.security.tokens import REQUIRED_CLAIMS, TokenError, TokenService, load_keys

from .conftest import HS_KEY, make_settings


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict, payload: dict, hmac_key: bytes | None) -> str:
    """A JWT built by hand, so headers PyJWT would refuse (alg none, PEM HMAC keys) can be made."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    if hmac_key is None:
        return head + "."
    return head + "." + _b64(hmac.new(hmac_key, head.encode(), hashlib.sha256).digest())


def _claims(**changes) -> dict:
    now = int(time.time())
    base = {"iss": "https://tieline.local", "aud": "tieline-api", "sub": "sp", "client_id": "sp",
            "scope": "flows:read", "iat": now, "nbf": now, "exp": now + 600, "jti": "j1"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def _hs(claims: dict, key: str = HS_KEY, typ: str | None = "at+jwt") -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": typ} if typ else None)


def test_issued_token_has_rfc9068_header_and_claims(tokens: TokenService) -> None:
    """An issued token is typ at+jwt, carries every required claim and validates back."""
    issued = tokens.issue("sp", {"messages:read", "flows:read"})
    header = jwt.get_unverified_header(issued.access_token)
    body = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert header == {"alg": "HS256", "typ": "at+jwt"}
    assert set(REQUIRED_CLAIMS) <= set(body)
    assert body["sub"] == body["client_id"] == "sp"
    assert body["exp"] - body["iat"] == issued.expires_in == 600
    claims = tokens.validate(issued.access_token)
    assert (claims.client_id, claims.scopes) == ("sp", frozenset({"flows:read", "messages:read"}))


def test_each_token_has_a_fresh_jti(tokens: TokenService) -> None:
    """Two tokens for the same client differ in jti."""
    a, b = (tokens.validate(tokens.issue("sp", ["flows:read"]).access_token) for _ in range(2))
    assert a.jti != b.jti


NOW = int(time.time())
REFUSED = [
    pytest.param(_hs(_claims(aud="other-api")), "wrong audience", id="wrong-audience"),
    pytest.param(_hs(_claims(iss="https://evil.example")), "wrong issuer", id="wrong-issuer"),
    pytest.param(_hs(_claims(exp=NOW - 31)), "token expired", id="expired-beyond-leeway"),
    pytest.param(_hs(_claims(nbf=NOW + 3600)), "not yet valid", id="nbf-in-future"),
    pytest.param(_hs(_claims(iat=NOW + 3600)), "issued in the future", id="iat-in-future"),
    pytest.param(_hs(_claims(), key="x" * 40), "bad signature", id="wrong-key"),
    pytest.param(_hs(_claims(), typ=None), "not at+jwt", id="typ-missing"),
    pytest.param(_hs(_claims(), typ="JWT"), "not at+jwt", id="typ-jwt"),
    pytest.param(_raw_token({"alg": "none", "typ": "at+jwt"}, _claims(), None),
                 "algorithm not allowed", id="alg-none"),
    pytest.param(_raw_token({"alg": "HS512", "typ": "at+jwt"}, _claims(), None),
                 "algorithm not allowed", id="alg-not-pinned"),
    pytest.param(_hs(_claims(client_id="ops")), "malformed claims", id="sub-differs-from-client_id"),
    pytest.param(_hs(_claims(exp="tomorrow")), "malformed", id="exp-not-a-number"),
    pytest.param(_hs(_claims(scope=["flows:read"])), "malformed claims", id="scope-not-a-string"),
    pytest.param("not.a.jwt", "malformed token", id="garbage"),
    pytest.param("", "malformed token", id="empty"),
    *[pytest.param(_hs(_claims(**{c: None})), "missing claim", id=f"missing-{c}")
      for c in REQUIRED_CLAIMS],
]


@pytest.mark.parametrize(("token", "reason"), REFUSED)
def test_refused_tokens(tokens: TokenService, token: str, reason: str) -> None:
    """Each broken rule is refused with its own caller-safe reason."""
    with pytest.raises(TokenError, match=re.escape(reason)):
        tokens.validate(token)


@pytest.mark.parametrize(("offset", "ok"), [(-25, True), (-35, False)], ids=["in-leeway", "past-leeway"])
def test_expiry_leeway_is_30_seconds(settings: SecuritySettings, offset: int, ok: bool) -> None:
    """A token expired less than 30 s ago still passes (clock skew); older does not."""
    issued_at = 1_000_000
    issuer = TokenService(settings, load_keys(settings.signing), clock=lambda: issued_at)
    token = issuer.issue("sp", ["flows:read"]).access_token
    checker = TokenService(settings, load_keys(settings.signing),
                           clock=lambda: issued_at + 600 - offset)
    if ok:
        assert checker.validate(token).client_id == "sp"
    else:
        with pytest.raises(TokenError, match="expired"):
            checker.validate(token)


def _write_keys(tmp_path: Path, private) -> SigningSettings:
    priv, pub = tmp_path / "private.pem", tmp_path / "public.pem"
    priv.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pub.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    alg = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
    return SigningSettings(alg=alg, private_key_file=priv, public_key_file=pub)


@pytest.mark.parametrize("make", [lambda: rsa.generate_private_key(65537, 2048),
                                  lambda: ec.generate_private_key(ec.SECP256R1())],
                         ids=["RS256", "ES256"])
def test_asymmetric_round_trip(tmp_path: Path, settings: SecuritySettings, make) -> None:
    """RS256 and ES256 keys from PEM files sign tokens that validate."""
    signing = _write_keys(tmp_path, make())
    service = TokenService(replace(settings, signing=signing), load_keys(signing))
    token = service.issue("sp", ["flows:read"]).access_token
    assert jwt.get_unverified_header(token)["alg"] == signing.alg
    assert service.validate(token).client_id == "sp"


def test_alg_confusion_hs256_signed_with_rsa_public_key(tmp_path: Path, settings: SecuritySettings) -> None:
    """An HS256 token keyed with the RS256 public key PEM is refused by an RS256 validator."""
    signing = _write_keys(tmp_path, rsa.generate_private_key(65537, 2048))
    service = TokenService(replace(settings, signing=signing), load_keys(signing))
    forged = _raw_token({"alg": "HS256", "typ": "at+jwt"}, _claims(),
                        signing.public_key_file.read_bytes())
    with pytest.raises(TokenError, match="algorithm not allowed"):
        service.validate(forged)


SETUP_ERRORS = [
    pytest.param(SigningSettings(alg="HS256"), "TIELINE_JWT_KEY", id="no-key"),
    pytest.param(SigningSettings(alg="HS256", key="short"), "at least 32 bytes", id="short-key"),
    pytest.param(SigningSettings(alg="RS256"), "private_key_file: required", id="no-rsa-key"),
    pytest.param(SigningSettings(alg="none"), "not one of", id="alg-none"),  # type: ignore[arg-type]
    pytest.param(SigningSettings(alg="RS256", private_key_file=Path("/nonexistent.pem")),
                 "cannot load", id="missing-file"),
]


@pytest.mark.parametrize(("signing", "message"), SETUP_ERRORS)
def test_load_keys_refuses_to_start(signing: SigningSettings, message: str) -> None:
    """Without a usable key there is no silent fallback: a clear error names the setting."""
    with pytest.raises(SecuritySetupError, match=message):
        load_keys(signing)


def test_key_type_must_match_alg(tmp_path: Path) -> None:
    """An EC key configured for RS256 is a setup error, not a runtime surprise."""
    signing = _write_keys(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(SecuritySetupError, match="not a key for RS256"):
        load_keys(replace(signing, alg="RS256"))


def test_dev_generated_key_is_per_process_only(settings: SecuritySettings) -> None:
    """dev_generate_key works, and a second generated key does not accept the first's tokens."""
    signing = SigningSettings(alg="HS256", dev_generate_key=True)
    one = TokenService(settings, load_keys(signing))
    two = TokenService(settings, load_keys(signing))
    token = one.issue("sp", ["flows:read"]).access_token
    assert one.validate(token).client_id == "sp"
    with pytest.raises(TokenError, match="bad signature"):
        two.validate(token)


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="abcXYZ019-_.=", max_size=200),
                 st.lists(st.text(alphabet="abcdefABCDEF0123456789-_", max_size=60),
                          min_size=3, max_size=3).map(".".join)))
def test_validator_fuzz_only_raises_token_error(text: str) -> None:
    """Random strings never make the validator raise anything but TokenError."""
    with pytest.raises(TokenError):
        _FUZZ_SERVICE.validate(text)


_FUZZ_SERVICE = TokenService(make_settings(), load_keys(make_settings().signing))
