"""The http connector and the runtime's guarded client: ``verify_tls: false`` keeps the guard."""

from __future__ import annotations

import pytest

from bus.security.netguard import GuardedClient, guarded_client
from connectors.base import ConnectorDeps, PermanentError
from connectors.http import HttpConnector
from connectors.testing import free_port


async def test_unverified_connector_still_refuses_private_addresses(ctx):
    """With verify_tls: false the connector's own client carries the shared client's policy."""
    async with guarded_client() as shared:
        conn = HttpConnector("crm", {"base_url": f"http://127.0.0.1:{free_port()}",
                                     "verify_tls": False}, ConnectorDeps(http=shared))
        await conn.start()
        assert isinstance(conn._client, GuardedClient) and conn._client is not shared
        with pytest.raises(PermanentError, match="refused"):
            await conn.call("post", {"a": 1}, ctx)
        await conn.close()
        assert not shared.is_closed  # only the sibling was the connector's to close


async def test_verified_connector_uses_the_shared_client(ctx):
    """With verification on (the default) the shared client itself is used, not a copy."""
    async with guarded_client() as shared:
        conn = HttpConnector("crm", {"base_url": "https://api.example.com"}, ConnectorDeps(http=shared))
        await conn.start()
        assert conn._client is shared
        await conn.close()
