"""The URL a hook hands its connector is the one Starlette would build (cached per URL)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from bus.http.ingress import _url

SCOPES = [
    {"scheme": "http", "server": ("127.0.0.1", 80), "path": "/hooks/a", "query_string": b"",
     "headers": [(b"host", b"example.com")]},
    {"scheme": "https", "server": ("::1", 8443), "path": "/hooks/a", "query_string": b"x=1&y=%20",
     "headers": []},
    {"scheme": "http", "server": ["10.0.0.1", 8080], "path": "/hooks/a b?#", "query_string": b"q",
     "headers": [(b"host", b"not a host!")]},
    {"scheme": "http", "server": None, "path": "//hooks", "query_string": b"", "headers": []},
    {"scheme": "http", "server": ("h", 80), "path": "/hooks/a", "query_string": b"",
     "headers": [(b"host", b"first:81"), (b"host", b"second")]},
]


@pytest.mark.parametrize("scope", SCOPES, ids=["host", "ipv6-query", "bad-host", "no-server", "two-hosts"])
@pytest.mark.parametrize("public_url", [None, "https://public.example/base/"])
def test_url_matches_starlette(scope: dict, public_url: str | None) -> None:
    """(url, path) equal Starlette's request.url (or public_url + its path and query), twice over."""
    scope = {"type": "http", **scope}
    url = Request(scope).url
    want = str(url) if public_url is None else (
        public_url.rstrip("/") + url.path + (f"?{url.query}" if url.query else ""))
    assert _url(scope, public_url) == (want, url.path)
    assert _url(scope, public_url) == (want, url.path)  # from the cache
