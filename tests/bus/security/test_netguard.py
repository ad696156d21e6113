"""Outbound guard: private targets refused at connect time, rebinding-proof, SNI intact."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from bus.security.netguard import (
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    guarded_client,
    is_public,
)
from bus.security.tls import server_ssl_context
from connectors.testing.server import free_port, serve_app

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


@pytest.mark.parametrize("answer", ["10.0.0.1", "127.0.0.1", "::ffff:127.0.0.1"],
                         ids=["private", "loopback", "v4-mapped-loopback"])
async def test_blocked_answer_reaches_the_caller_as_blocked(answer: str) -> None:
    """Refused, the caller sees BlockedAddressError itself, not a (retryable) transport error."""
    http, _ = client({"svc.test": [answer]})
    async with http:
        with pytest.raises(BlockedAddressError) as caught:
            await http.get("http://svc.test:9/")
    assert caught.type is BlockedAddressError and not isinstance(caught.value, httpx.TransportError)
    assert str(ipaddress.ip_address(answer)) in str(caught.value)


async def test_redirect_to_a_private_address_literal_is_refused() -> None:
    """A followed redirect to an IP-address URL is checked like the first hop."""
    async def jump(request):
        return RedirectResponse(f"http://10.0.0.1:{request.url.port}/", 307)

    async with serve_app(Starlette(routes=[Route("/", jump)])) as url:
        port = httpx.URL(url).port
        http, _ = client({"svc.test": ["127.0.0.1"]}, allow_hosts=["svc.test"],
                         follow_redirects=True)
        async with http:
            with pytest.raises(BlockedAddressError, match="10.0.0.1"):
                await http.get(f"http://svc.test:{port}/")


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.1"], ids=["short", "integer", "hex"])
async def test_odd_address_spellings_are_refused(host: str) -> None:
    """Numeric hosts that are not plain addresses (libc reads them as 127.0.0.1) are refused."""
    http, _ = client({host: ["127.0.0.1"]})  # what a libc resolver answers for these
    async with http:
        with pytest.raises(BlockedAddressError):
            await http.get(f"http://{host}:9/")


def test_sockets_open_only_to_checked_addresses() -> None:
    """The socket factory (aiohttp's last step before connect) refuses unchecked addresses."""
    guard = GuardedResolver(AddressPolicy(allow_hosts=["svc.test"]), StubResolver({}))
    with pytest.raises(BlockedAddressError, match="never checked"):
        guard.socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    guard.socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 80))).close()


async def test_rebinding_cannot_reach_an_unchecked_address() -> None:
    """The addresses handed to aiohttp are the checked ones; a later answer changes nothing."""
    resolver = StubResolver({"svc.test": [["127.0.0.1"], ["10.0.0.1"]]})
    guard = GuardedResolver(AddressPolicy(allow_hosts=["svc.test"]), resolver)
    [first] = await guard.resolve("svc.test", 80)
    assert first["host"] == "127.0.0.1"
    guard.socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))).close()
    with pytest.raises(BlockedAddressError):
        guard.socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80)))


async def test_connection_refused_on_an_allowed_address_is_a_connect_error() -> None:
    """Allowed but nothing listening: an ordinary (retryable) httpx.ConnectError."""
    http, _ = client({"svc.test": ["127.0.0.1"]}, allow_cidrs=["127.0.0.1/32"])
    async with http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://svc.test:{free_port()}/")


async def test_read_timeout_is_an_httpx_timeout() -> None:
    """An allowed server that answers too late: httpx.ReadTimeout."""
    async def late(request):
        await asyncio.sleep(10)

    async with serve_app(Starlette(routes=[Route("/", late)])) as url:
        http, _ = client({}, allow_cidrs=["127.0.0.1/32"])
        async with http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(url + "/", timeout=0.2)


async def test_unverified_sibling_keeps_the_policy(cert_files) -> None:
    """``unverified()`` skips the certificate check but not the address check."""
    cert, key = cert_files
    async with serve_tls(HELLO, server_ssl_context(cert, key)) as port:
        http, _ = client({"svc.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]},
                         allow_hosts=["other.test"])
        async with http, http.unverified() as loose:
            assert (await loose.get(f"https://other.test:{port}/")).status_code == 200
            with pytest.raises(BlockedAddressError):
                await loose.get(f"https://svc.test:{port}/")
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await http.get(f"https://other.test:{port}/")


async def test_shared_client_keeps_no_response_cookies() -> None:
    """Set-Cookie from one call never rides along on the next (the client is shared)."""
    async def login(request):
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("session", "vendor-a")
        return response

    async with serve_app(Starlette(routes=[Route("/", login)])) as url:
        http, _ = client({}, allow_cidrs=["127.0.0.1/32"], cookies={"given": "1"})
        async with http:
            await http.get(url + "/")
            assert (await http.get(url + "/")).json() == {"cookie": "given=1"}
