"""Outbound guard: private targets refused at connect time, rebinding-proof, SNI intact."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Sequence

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Route

from bus.security.netguard import BlockedAddressError, guarded_client, is_public
from bus.security.tls import server_ssl_context
from connectors.testing.server import serve_app

from .conftest import HELLO, serve_tls


class StubResolver:
    """Answers from a table (a list of answers is consumed one per call) and counts calls."""

    def __init__(self, table: dict[str, Sequence[str] | list[Sequence[str]]]):
        self.table, self.calls = table, []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answer = self.table.get(host)
        if answer is None:
            raise OSError(f"stub: no such host {host}")
        if answer and isinstance(answer[0], list | tuple):
            return answer.pop(0)  # type: ignore[return-value]
        return answer  # type: ignore[return-value]


@pytest.mark.parametrize(("ip", "public"), [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("64:ff9b::808:808", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("240.0.0.1", False), ("255.255.255.255", False), ("192.0.2.1", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("ff02::1", False),
    ("ff0e::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("2002:7f00:1::", False), ("64:ff9b::a00:1", False), ("2001:db8::1", False),
])
def test_is_public(ip: str, public: bool) -> None:
    """Only globally routable unicast counts, including IPv4 embedded in IPv6 forms."""
    assert is_public(ipaddress.ip_address(ip)) is public


def client(table: dict, *, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = (),
           **kw) -> tuple[httpx.AsyncClient, StubResolver]:
    resolver = StubResolver(table)
    return guarded_client(allow_hosts=allow_hosts, allow_cidrs=allow_cidrs, resolver=resolver,
                          timeout=2.0, **kw), resolver


async def test_private_answer_is_refused_before_any_connection() -> None:
    """A name resolving to loopback is refused; the server never sees a request."""
    seen: list[str] = []

    async def record(request):
        seen.append(request.url.path)
        return RedirectResponse("/elsewhere")

    async with serve_app(Starlette(routes=[Route("/", record)])) as url:
        port = httpx.URL(url).port
        http, _ = client({"svc.test": ["127.0.0.1"]})
        async with http:
            with pytest.raises(BlockedAddressError, match=r"'svc.test'.*127.0.0.1.*allow-list"):
                await http.get(f"http://svc.test:{port}/")
    assert seen == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/", "http://[::ffff:127.0.0.1]:{port}/",
                                 "http://0.0.0.0:{port}/"], ids=["v4", "v4-mapped-v6", "unspecified"])
async def test_ip_literals_are_checked_too(url: str) -> None:
    """An address in the URL is checked without asking the resolver."""
    http, resolver = client({})
    async with http:
        with pytest.raises(BlockedAddressError):
            await http.get(url.format(port=9))
    assert resolver.calls == []


@pytest.mark.parametrize("allow", [{"allow_cidrs": ["127.0.0.0/8"]}, {"allow_hosts": ["SVC.test"]}],
                         ids=["cidr", "host"])
async def test_allow_listed_destination_connects_to_the_checked_ip(allow: dict) -> None:
    """Allowed, the request reaches the address the stub gave (the OS cannot resolve svc.test)."""
    async with serve_app(HELLO) as url:
        port = httpx.URL(url).port
        http, _ = client({"svc.test": ["127.0.0.1"]}, **allow)
        async with http:
            r = await http.get(f"http://svc.test:{port}/")
    assert r.json() == {"host": f"svc.test:{port}"}


async def test_dns_rebinding_cannot_swap_the_address() -> None:
    """The name is resolved once per connection: a second, different answer is never used."""
    async with serve_app(HELLO) as url:
        port = httpx.URL(url).port
        http, resolver = client({"svc.test": [["127.0.0.1"], ["10.255.255.1"]]},
                                allow_cidrs=["127.0.0.1/32"])
        async with http:
            r = await http.get(f"http://svc.test:{port}/")
    assert r.status_code == 200 and resolver.calls == ["svc.test"]


async def test_mixed_answers_use_only_allowed_addresses() -> None:
    """With a private and an allowed answer, only the allowed one is dialled."""
    async with serve_app(HELLO) as url:
        port = httpx.URL(url).port
        http, _ = client({"svc.test": ["10.255.255.1", "127.0.0.1"]}, allow_cidrs=["127.0.0.1/32"])
        async with http:
            assert (await http.get(f"http://svc.test:{port}/")).status_code == 200


async def test_redirects_are_not_followed_by_default_and_checked_when_followed() -> None:
    """A redirect to a private address is returned as is, or refused when following."""
    async def jump(request):
        return RedirectResponse(f"http://inner.test:{request.url.port}/", 302)

    async with serve_app(Starlette(routes=[Route("/", jump)])) as url:
        port = httpx.URL(url).port
        table = {"svc.test": ["127.0.0.1"], "inner.test": ["127.0.0.1"]}
        http, _ = client(table, allow_hosts=["svc.test"])
        async with http:
            assert (await http.get(f"http://svc.test:{port}/")).status_code == 302
        http, _ = client(table, allow_hosts=["svc.test"], follow_redirects=True)
        async with http:
            with pytest.raises(BlockedAddressError, match="inner.test"):
                await http.get(f"http://svc.test:{port}/")


async def test_tls_keeps_sni_and_hostname_verification(cert_files) -> None:
    """Over HTTPS the certificate is checked against the hostname, not the dialled IP."""
    cert, key = cert_files
    verify = ssl.create_default_context(cafile=str(cert))
    table = {"svc.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    async with serve_tls(HELLO, server_ssl_context(cert, key)) as port:
        http, _ = client(table, allow_cidrs=["127.0.0.1/32"], verify=verify)
        async with http:
            r = await http.get(f"https://svc.test:{port}/")
            assert r.json() == {"host": f"svc.test:{port}"}
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await http.get(f"https://other.test:{port}/")


async def test_unresolvable_host_is_a_connect_error() -> None:
    """A name the resolver cannot answer is an ordinary (retryable) connect error."""
    http, _ = client({})
    async with http:
        with pytest.raises(httpx.ConnectError, match="cannot resolve 'nowhere.test'"):
            await http.get("http://nowhere.test/")
