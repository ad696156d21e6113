"""Operator actions behind the CLI, against a running bus (HTTP API) or offline (the data file).

The CLI asks the bus named in flows.yaml first; when nothing answers there it opens the
embedded transport itself, so dead letters can be inspected and replayed while the bus is down
(replayed messages run at the next start).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bus.http.api import record_dict
from bus.runtime import Runtime
from bus.transport.base import TERMINAL, MessageState


class OpsError(Exception):
    pass


class RemoteOps:
    def __init__(self, base_url: str, client: httpx.AsyncClient):
        self.base = base_url.rstrip("/")
        self.client = client

    async def _req(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.client.request(method, self.base + path, **kw)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise OpsError(f"{err['message']} (HTTP {r.status_code})")
            except (ValueError, KeyError):
                raise OpsError(f"HTTP {r.status_code}: {r.text[:200]}") from None
        return r.json()

    async def dead_letters(self, flow: str | None, limit: int) -> list[dict]:
        params = {"limit": limit, **({"flow": flow} if flow else {})}
        return (await self._req("GET", "/api/v1/dlq", params=params))["dead_letters"]

    async def dead_letter(self, mid: str) -> dict:
        return await self._req("GET", f"/api/v1/dlq/{mid}")

    async def replay(self, mid: str) -> list[str]:
        return (await self._req("POST", f"/api/v1/dlq/{mid}/replay"))["replayed"]

    async def replay_all(self, flow: str | None) -> list[str]:
        return (await self._req("POST", "/api/v1/dlq/replay", json={"flow": flow}))["replayed"]

    async def purge(self, ids: list[str] | None, flow: str | None) -> int:
        body = {"ids": ids} if ids else ({"flow": flow} if flow else {"all": True})
        return (await self._req("POST", "/api/v1/dlq/purge", json=body))["purged"]

    async def message(self, mid: str) -> dict:
        return await self._req("GET", f"/api/v1/messages/{mid}")

    async def send(self, flow: str, body: Any) -> str:
        return (await self._req("POST", f"/flows/{flow}", json=body))["accepted"][0]


class LocalOps:
    """The same operations on a runtime opened in this process."""

    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.t = runtime.transport

    async def dead_letters(self, flow: str | None, limit: int) -> list[dict]:
        return [d.to_dict() for d in await self.t.dead_letters(flow=flow, limit=limit)]

    async def dead_letter(self, mid: str) -> dict:
        dl = await self.t.dead_letter(mid)
        if dl is None:
            raise OpsError(f"no dead letter {mid!r}")
        return dl.to_dict()

    async def replay(self, mid: str) -> list[str]:
        if not await self.rt.replay(mid):
            raise OpsError(f"no dead letter {mid!r}")
        return [mid]

    async def replay_all(self, flow: str | None) -> list[str]:
        return await self.rt.replay_all(flow=flow)

    async def purge(self, ids: list[str] | None, flow: str | None) -> int:
        if not ids:
            ids = [d.message_id for d in await self.t.dead_letters(flow=flow, limit=1_000_000)]
        return await self.t.purge(ids)

    async def message(self, mid: str) -> dict:
        rec = await self.t.message(mid)
        if rec is None:
            raise OpsError(f"no message with id {mid!r}")
        history = await self.t.history(mid)
        return {"message": record_dict(rec), "history": [e.to_dict() for e in history]}

    async def send(self, flow: str, body: Any) -> str:
        if flow not in self.rt.flows:
            raise OpsError(f"no flow named {flow!r}; flows: {', '.join(sorted(self.rt.flows))}")
        return await self.rt.ingress.admit_to_flow(flow, body)


async def bus_url(config_path: Path, url: str | None) -> str | None:
    """The URL of a running bus for this configuration, or None if none answers."""
    if url:
        return url
    from bus.config.loader import load_config
    from connectors.registry import ConnectorRegistry

    cfg = load_config(config_path, connector_types=ConnectorRegistry.from_entry_points().types)
    http = cfg.settings.http
    candidate = f"http://{http.host}:{http.port}"
    try:
        async with httpx.AsyncClient(timeout=0.5) as c:
            r = await c.get(candidate + "/healthz")
            return candidate if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


@asynccontextmanager
async def operations(
    config_path: Path, url: str | None = None, *, consume: bool = False
) -> AsyncIterator[RemoteOps | LocalOps]:
    """Remote ops when a bus answers, else local ops (consuming only if asked, for `send`)."""
    found = await bus_url(config_path, url)
    if found:
        async with httpx.AsyncClient(timeout=10.0) as client:
            yield RemoteOps(found, client)
        return
    # Shared: worker processes of this bus may still run on the file (its server is down).
    rt = Runtime.from_file(config_path, shared=True)
    await rt.start(consume=consume)
    try:
        yield LocalOps(rt)
    finally:
        await rt.stop()


async def wait_terminal(ops: RemoteOps | LocalOps, mid: str, timeout: float) -> dict:
    """Poll a message until it is delivered, filtered or dead (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    terminal = {s.value for s in TERMINAL}
    while True:
        info = await ops.message(mid)
        state = info["message"]["state"]
        if state in terminal or time.monotonic() > deadline:
            return info
        if state == MessageState.QUEUED.value and info["message"]["attempt"] > 1:
            return info  # waiting for a retry: report where it stands rather than block
        await asyncio.sleep(0.05)
