"""Security end to end: OAuth tokens, scopes per route, field projection, audit, TLS via the CLI."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys

import httpx
import pytest
from structlog.testing import capture_logs

from bus.transport.base import MessageState
from tests.bus.security.conftest import cert_files  # noqa: F401 - a fixture
from tests.e2e.test_crash import ROOT, free_port
from tests.e2e.test_delivery import MAPPING, ORDER, flows

KEY = "k" * 40
SECRETS = {"operator": "operator-secret-0123456789", "platform": "platform-secret-0123456789",
           "reader": "reader-secret-0123456789"}
SECURITY = f"""
security:
  issuer: https://tieline.test
  audience: tieline-api
  token_ttl: 5m
  signing: {{alg: HS256, key: "{KEY}"}}
  clients:
    operator:
      secret: "{SECRETS['operator']}"
      scopes: [flows:read, flows:write, messages:read, dlq:read, dlq:replay, dlq:purge, events:send]
    platform:
      secret: "{SECRETS['platform']}"
      scopes: ["flow:ticket_status"]
      fields: {{ticket_status: [id, status, updated_at]}}
    reader:
      secret: "{SECRETS['reader']}"
      scopes: [flows:read]
"""
SYNC_FLOW = """
  ticket_status:
    from: {http: "GET /api/tickets/{id}"}
    steps:
      - to: sink.request
        map:
          fields:
            method: {const: GET}
            path: {template: "/tickets/{body.params.id}"}
        as: ticket
      - reply:
          map:
            fields:
              id: body.params.id
              status: context.ticket.status
              updated_at: context.ticket.updated_at
              requester.phone: context.ticket.phone
              internal_note: context.ticket.note
"""


@pytest.fixture
async def bus(make_bus, sink):
    state, url = sink
    state.respond(200, {"status": "open", "updated_at": "2026-11-25T10:00:00Z",
                        "phone": "+14155550100", "note": "VIP, angry"})
    text = flows(url) + SYNC_FLOW + SECURITY
    async with make_bus(text, {"order_to_sink": MAPPING}) as b:
        b.sink = state
        yield b


async def token(bus, client: str, **form: str) -> str:
    r = await bus.client.post("/oauth/token", data={"grant_type": "client_credentials", **form},
                              auth=(client, SECRETS[client]))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()["access_token"]


def bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/flows"), ("GET", "/api/v1/dlq"), ("POST", "/api/v1/dlq/purge"),
     ("GET", "/metrics"), ("POST", "/flows/relay"), ("GET", "/api/tickets/1")],
    ids=["flows", "dlq", "purge", "metrics", "flow-entry", "sync-flow"],
)
async def test_no_token_is_401(bus, method, path):
    """Every protected route answers 401 with a Bearer challenge when no token is sent."""
    r = await bus.client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"]


async def test_bad_token_is_401_invalid_token(bus):
    """A token signed with another key is refused as invalid_token."""
    import jwt

    forged = jwt.encode({"iss": "https://tieline.test", "aud": "tieline-api", "sub": "operator",
                         "client_id": "operator", "scope": "flows:read", "exp": 9999999999,
                         "iat": 1, "jti": "x"}, "z" * 40, algorithm="HS256", headers={"typ": "at+jwt"})
    r = await bus.client.get("/api/v1/flows", headers=bearer(forged))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


async def test_missing_scope_is_403_and_granted_scope_is_200(bus):
    """A reader may list flows but not read dead letters."""
    t = await token(bus, "reader")
    assert (await bus.client.get("/api/v1/flows", headers=bearer(t))).status_code == 200
    r = await bus.client.get("/api/v1/dlq", headers=bearer(t))
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"


async def test_client_sees_only_its_allowed_fields(bus):
    """The platform reads a ticket's id, status and update time — nothing else leaves the server."""
    t = await token(bus, "platform")
    r = await bus.client.get("/api/tickets/42", headers=bearer(t))
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "42", "status": "open", "updated_at": "2026-11-25T10:00:00Z"}
    op = await token(bus, "reader")
    assert (await bus.client.get("/api/tickets/42", headers=bearer(op))).status_code == 403


async def test_replay_is_audited_with_the_client_and_secrets_never_leak(bus):
    """The audit names the client; secrets appear in no log line, ledger entry or API answer."""
    t = await token(bus, "operator")
    bus.sink.fail_next(1, status=400, path="/orders")
    with capture_logs() as logs:
        r = await bus.client.post("/flows/relay", json=ORDER, headers=bearer(t))
        (mid,) = r.json()["accepted"]
        await bus.wait_state(mid)
        assert (await bus.client.post(f"/api/v1/dlq/{mid}/replay", headers=bearer(t))).status_code == 200
        assert await bus.wait_state(mid) == MessageState.DELIVERED
    audit = (await bus.client.get("/api/v1/audit", headers=bearer(t))).json()["audit"]
    assert audit[0]["actor"] == "operator" and audit[0]["ids"] == [mid]
    seen = [str(logs)]
    seen.append((await bus.client.get(f"/api/v1/messages/{mid}", headers=bearer(t))).text)
    seen.append((await bus.client.get("/api/v1/connectors", headers=bearer(t))).text)
    seen += [str(e) for e in await bus.runtime.transport.history(mid)]
    for secret in [*SECRETS.values(), KEY]:
        assert all(secret not in text for text in seen)


async def test_cli_serves_tls13_and_refuses_tls12(tmp_path, cert_files):  # noqa: F811
    """`tieline run --tls-cert --tls-key` serves HTTPS: TLS 1.3 handshakes, TLS 1.2 is refused."""
    cert, key = cert_files
    (tmp_path / "flows.yaml").write_text("version: 1\nsettings: {data_dir: ./data}\nflows: {}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(tmp_path / "flows.yaml"),
                             "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def ctx(version: ssl.TLSVersion) -> ssl.SSLContext:
            c = ssl.create_default_context(cafile=str(cert))
            c.minimum_version = c.maximum_version = version
            return c

        for _ in range(200):
            try:
                async with httpx.AsyncClient(verify=ctx(ssl.TLSVersion.TLSv1_3)) as c:
                    r = await c.get(f"https://127.0.0.1:{port}/healthz")
                break
            except httpx.ConnectError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read().decode()[-2000:]) from None
                await asyncio.sleep(0.05)
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(verify=ctx(ssl.TLSVersion.TLSv1_2)) as c:
                await c.get(f"https://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        proc.wait(10)
