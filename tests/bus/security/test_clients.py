"""The security settings model, secret hashing and the client registry."""

from __future__ import annotations

import hashlib

import pytest

from bus.security import clients as clients_mod
from bus.security.clients import (
    ClientRegistry,
    SecuritySetupError,
    hash_secret,
    settings_from_mapping,
    verify_secret,
)

from .conftest import FAST

RAW = {
    "issuer": "https://tieline.local", "audience": "tieline-api", "token_ttl": "10m",
    "signing": {"alg": "HS256", "key": "k" * 40},
    "clients": {
        "service_platform": {"secret": "plain-secret",
                             "scopes": ["flows:read", "messages:read", "flow:ticket_status"],
                             "fields": {"ticket_status": ["id", "status", "updated_at"]}},
        "ops": {"secret_hash": hash_secret("ops", iterations=FAST), "scopes": ["flows:read"]},
    },
}


def test_settings_from_mapping_builds_the_model() -> None:
    """The documented YAML shape becomes frozen settings; a plain secret is kept only hashed."""
    s = settings_from_mapping(RAW, iterations=FAST)
    assert (s.issuer, s.audience, s.token_ttl, s.leeway) == (RAW["issuer"], "tieline-api", 600.0, 30.0)
    sp = s.clients["service_platform"]
    assert sp.scopes == {"flows:read", "messages:read", "flow:ticket_status"}
    assert sp.fields == {"ticket_status": ("id", "status", "updated_at")}
    assert sp.secret_hash.startswith(f"pbkdf2_sha256${FAST}$") and "plain-secret" not in repr(s)
    assert verify_secret("plain-secret", sp.secret_hash)


@pytest.mark.parametrize(("change", "message"), [
    ({"issuerr": "x"}, "unknown key 'issuerr'"),
    ({"signing": {"alg": "HS256", "kye": "x"}}, "security.signing: unknown key 'kye'"),
    ({"clients": {"c": {"scopes": []}}}, "exactly one of 'secret' or 'secret_hash'"),
    ({"clients": {"c": {"secret": "a", "secret_hash": "b"}}}, "exactly one of"),
    ({"clients": {"c": {"secret_hash": "md5$abc"}}}, "not a pbkdf2_sha256"),
    ({"clients": {"c": {"secret": "a", "scopes": ['bad"scope']}}}, "security.clients.c.scopes"),
    ({"token_ttl": "ten minutes"}, "not a duration"),
], ids=["unknown-key", "unknown-signing-key", "no-secret", "both-secrets", "bad-hash",
        "bad-scope", "bad-duration"])
def test_bad_settings_name_the_key(change: dict, message: str) -> None:
    """Mistakes are refused with the path of the offending key."""
    with pytest.raises(SecuritySetupError, match=message):
        settings_from_mapping({**RAW, **change}, iterations=FAST)


def test_missing_issuer_is_named() -> None:
    """A required key that is absent is named."""
    raw = {k: v for k, v in RAW.items() if k != "issuer"}
    with pytest.raises(SecuritySetupError, match="security.issuer: required"):
        settings_from_mapping(raw, iterations=FAST)


@pytest.mark.parametrize(("secret", "candidate", "ok"), [
    ("s", "s", True), ("s", "S", False), ("s", "", False), ("ünïcode", "ünïcode", True),
])
def test_verify_secret(secret: str, candidate: str, ok: bool) -> None:
    """Only the exact secret verifies against its hash."""
    assert verify_secret(candidate, hash_secret(secret, iterations=FAST)) is ok


def test_registry_authenticates() -> None:
    """The right secret returns the client; a wrong one or an unknown id returns None."""
    registry = ClientRegistry(settings_from_mapping(RAW, iterations=FAST).clients)
    assert registry.authenticate("ops", "ops").client_id == "ops"
    assert registry.authenticate("ops", "nope") is None
    assert registry.authenticate("ghost", "ops") is None


def test_unknown_client_costs_the_same_as_a_wrong_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown id runs PBKDF2 with as many rounds as a known one (no timing oracle)."""
    registry = ClientRegistry(settings_from_mapping(RAW, iterations=FAST).clients)
    rounds: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name, password, salt, iterations, *args):
        rounds.append(iterations)
        return real(name, password, salt, iterations, *args)

    monkeypatch.setattr(clients_mod.hashlib, "pbkdf2_hmac", counting)
    registry.authenticate("ops", "wrong")
    registry.authenticate("ghost", "wrong")
    assert rounds == [FAST, FAST]
