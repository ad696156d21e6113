"""The ``security:`` configuration model, client secret hashing and the client registry.

Secrets are kept only as PBKDF2-SHA256 hashes (``pbkdf2_sha256$<iterations>$<salt>$<hash>``,
salt and hash in unpadded urlsafe base64). A plain ``secret:`` from the environment is hashed
when the settings are built, so no plain secret outlives loading.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bus.errors import TielineError

DEFAULT_ITERATIONS = 600_000  # OWASP 2023 figure for PBKDF2-HMAC-SHA256
_HASH = re.compile(r"pbkdf2_sha256\$([0-9]{1,9})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]{43})")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|)\s*")
_SECONDS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

Alg = Literal["HS256", "RS256", "ES256"]


class SecuritySetupError(TielineError):
    """The ``security:`` settings cannot be used (missing key, bad hash, unknown field)."""


def hash_secret(secret: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """Hash ``secret`` for storage as ``secret_hash:`` in the configuration."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """True if ``secret`` matches ``encoded``; the comparison is constant-time."""
    iterations, salt, expected = _parse_hash(encoded)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "surrogatepass"), salt, iterations)
    return hmac.compare_digest(digest, expected)


def _parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    match = _HASH.fullmatch(encoded)
    if not match:
        raise SecuritySetupError(
            "secret_hash: not a pbkdf2_sha256$<iterations>$<salt>$<hash> string; "
            "make one with bus.security.clients.hash_secret()")
    return int(match.group(1)), _unb64(match.group(2)), _unb64(match.group(3))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Client:
    """One API client: its id, the hash of its secret, granted scopes and field allow-lists."""

    client_id: str
    secret_hash: str
    scopes: frozenset[str]
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # sync flow → dotted paths


@dataclass(frozen=True, slots=True)
class SigningSettings:
    alg: Alg = "HS256"
    key: str | None = None  # HS256 shared key (≥ 32 bytes)
    private_key_file: Path | None = None  # RS256/ES256 PEM
    public_key_file: Path | None = None
    dev_generate_key: bool = False  # only for a single-process dev server


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    issuer: str
    audience: str
    signing: SigningSettings
    clients: Mapping[str, Client]
    token_ttl: float = 600.0  # seconds
    leeway: float = 30.0  # clock skew allowed on exp/nbf/iat


def parse_scopes(text: str) -> frozenset[str]:
    """Split a space-separated scope string; ValueError if a token has a forbidden character."""
    tokens = text.split(" ")
    bad = [t for t in tokens if t and not _SCOPE_TOKEN.fullmatch(t)]
    if bad:
        raise ValueError(f"scope token {bad[0]!r} has characters RFC 6749 §3.3 does not allow")
    return frozenset(t for t in tokens if t)


def settings_from_mapping(raw: Mapping[str, Any], *, iterations: int = DEFAULT_ITERATIONS) -> SecuritySettings:
    """Build the model from the (already interpolated and schema-checked) ``security:`` mapping."""
    _only(raw, {"issuer", "audience", "token_ttl", "leeway", "signing", "clients"}, "security")
    signing = dict(raw.get("signing") or {})
    _only(signing, {"alg", "key", "private_key_file", "public_key_file", "dev_generate_key"},
          "security.signing")
    clients = {cid: _client(cid, spec, iterations) for cid, spec in (raw.get("clients") or {}).items()}
    try:
        return SecuritySettings(
            issuer=str(raw["issuer"]), audience=str(raw["audience"]),
            token_ttl=_duration(raw.get("token_ttl", 600)), leeway=_duration(raw.get("leeway", 30)),
            signing=SigningSettings(
                alg=signing.get("alg", "HS256"), key=signing.get("key"),
                private_key_file=_path(signing.get("private_key_file")),
                public_key_file=_path(signing.get("public_key_file")),
                dev_generate_key=bool(signing.get("dev_generate_key", False))),
            clients=clients)
    except KeyError as exc:
        raise SecuritySetupError(f"security.{exc.args[0]}: required; add it to flows.yaml") from None


def _client(cid: str, spec: Mapping[str, Any], iterations: int) -> Client:
    where = f"security.clients.{cid}"
    _only(spec, {"secret", "secret_hash", "scopes", "fields"}, where)
    if ("secret" in spec) == ("secret_hash" in spec):
        raise SecuritySetupError(f"{where}: give exactly one of 'secret' or 'secret_hash'")
    if "secret_hash" in spec:
        _parse_hash(spec["secret_hash"])
        hashed = spec["secret_hash"]
    else:
        hashed = hash_secret(str(spec["secret"]), iterations=iterations)
    try:
        scopes = frozenset().union(*(parse_scopes(str(s)) for s in spec.get("scopes", [])))
    except ValueError as exc:
        raise SecuritySetupError(f"{where}.scopes: {exc}") from None
    fields = {flow: tuple(paths) for flow, paths in (spec.get("fields") or {}).items()}
    return Client(client_id=cid, secret_hash=hashed, scopes=scopes, fields=fields)


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SecuritySetupError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(allowed)}")


def _duration(value: float | str) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.fullmatch(value)
    if not match:
        raise SecuritySetupError(f"security: {value!r} is not a duration like 30s, 10m, 1h")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


class ClientRegistry:
    """Looks clients up and checks secrets without telling unknown ids from wrong secrets."""

    def __init__(self, clients: Mapping[str, Client]):
        self._clients = dict(clients)
        # An unknown id is checked against a dummy hash as costly as the costliest real one.
        rounds = max((_parse_hash(c.secret_hash)[0] for c in self._clients.values()),
                     default=DEFAULT_ITERATIONS)
        self._dummy = hash_secret(secrets.token_urlsafe(16), iterations=rounds)

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def authenticate(self, client_id: str, secret: str) -> Client | None:
        """The client if ``secret`` is its secret, else None; same work either way."""
        client = self._clients.get(client_id)
        ok = verify_secret(secret, client.secret_hash if client else self._dummy)
        return client if ok and client is not None else None
