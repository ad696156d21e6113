"""The OpenAPI document matches the routes, validates, and fuzzing the API finds no 5xx."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from starlette.routing import Route

from bus.http.app import build_app
from tests.e2e.test_delivery import MAPPING, flows


@pytest.fixture
async def api(make_bus, sink):
    _, url = sink
    async with make_bus(flows(url), {"order_to_sink": MAPPING}) as bus:
        yield bus


async def test_document_is_valid_openapi_31(api):
    """/api/v1/openapi.json is a valid OpenAPI 3.1 document."""
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


async def test_every_management_route_is_documented(api):
    """Each /api/v1 route and method served is in the document, and nothing else is."""
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (r.path, m)
        for r in build_app(api.runtime).routes
        if isinstance(r, Route) and (r.path.startswith("/api/v1/") or r.path in ("/flows/{flow}", "/metrics"))
        and r.path != "/api/v1/openapi.json"
        for m in r.methods or ()
        if m != "HEAD"
    }
    assert documented == served


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


async def test_fuzzed_requests_never_get_a_5xx(api):
    """Random path parameters, query values and JSON bodies on every operation: 4xx at worst."""
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    transport = httpx.ASGITransport(app=build_app(api.runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        seen: list[tuple[str, int]] = []

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.data())
        def explore(data: st.DataObject) -> None:
            path, method, op = data.draw(st.sampled_from(operations))
            url, query = path, {}
            for p in op.get("parameters", []):
                value = data.draw(text if p["in"] == "path" else st.one_of(text, st.integers().map(str)))
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", quote(value, safe="") or "x")
                elif data.draw(st.booleans()):
                    query[p["name"]] = value
            body = data.draw(json_values) if method == "post" else None
            seen.append((method, url, query, body))

        explore()
        statuses = []
        for method, url, query, body in seen:
            kwargs = {"params": query}
            if body is not None:
                kwargs["json"] = body
            r = await client.request(method.upper(), url, **kwargs)
            statuses.append(r.status_code)
            assert r.status_code < 500, (method, url, query, body, r.text)
    assert len(statuses) == 150


async def test_fuzzed_webhooks_never_get_a_5xx(api):
    """Random bodies and signature headers on the webhook ingress: refused with 4xx, never a crash."""
    transport = httpx.ASGITransport(app=build_app(api.runtime))
    cases: list[tuple[bytes, dict[str, str]]] = []
    header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300) | json_values.map(lambda v: httpx.Request("POST", "/", json=v).read()),
           st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature",
                                            "content-type", "traceparent"]), header_text))
    def explore(body: bytes, headers: dict[str, str]) -> None:
        cases.append((body, headers))

    explore()
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        for body, headers in cases:
            r = await client.post("/hooks/vendor", content=body, headers=headers)
            assert r.status_code < 500, (body, headers, r.text)
            assert r.json()["error"]["code"]
