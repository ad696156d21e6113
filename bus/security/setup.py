"""Build the security objects from flows.yaml's ``security:`` section (once, at load)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.routing import Route

from bus.security.clients import ClientRegistry, settings_from_mapping
from bus.security.guard import Guard
from bus.security.oauth import token_route
from bus.security.ratelimit import TokenBucket
from bus.security.tokens import TokenService, load_keys

# Plain secrets from the environment are hashed only so the process keeps no plaintext; the
# stored-hash form (secret_hash) is what should carry the expensive iteration count.
PLAIN_SECRET_ITERATIONS = 100_000


@dataclass(frozen=True)
class Security:
    clients: ClientRegistry
    tokens: TokenService
    guard: Guard

    def routes(self) -> list[Route]:
        # 10 token requests/s per client IP with bursts of 20: enough for any real client,
        # and a brake on secret guessing.
        return [token_route(self.clients, self.tokens, limiter=TokenBucket(10, 20))]


def build_security(raw: Mapping[str, Any] | None) -> Security | None:
    """None when flows.yaml has no ``security:``; raises SecuritySetupError when it is unusable."""
    if not raw:
        return None
    settings = settings_from_mapping(raw, iterations=PLAIN_SECRET_ITERATIONS)
    clients = ClientRegistry(settings.clients)
    tokens = TokenService(settings, load_keys(settings.signing))
    return Security(clients, tokens, Guard(tokens, clients))
