"""Outbound request guard against SSRF: no private, loopback, link-local or reserved targets.

The check runs where the socket is opened: :class:`GuardedTransport` hands httpcore a network
backend that resolves the host once, checks every address and connects to a checked address
itself. A DNS answer that changes between check and connect (DNS rebinding) therefore cannot
redirect the connection; the URL is not rewritten, so Host, SNI and certificate checks still
use the hostname. Redirects are the client's business: :func:`guarded_client` does not follow
them unless asked, and each followed hop goes through the same check. Proxies are not used (a
proxy would make the connection on our behalf, out of reach of the check).
"""

from __future__ import annotations

import ipaddress
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import httpcore
import httpx

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


class BlockedAddressError(httpx.RequestError):
    """The destination resolves only to addresses outbound requests may not reach.

    Not an ``httpx.TransportError``: retrying cannot help, callers should treat it as permanent.
    """


async def system_resolver(host: str, port: int) -> list[str]:
    """Addresses for ``host`` from the operating system's resolver."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public(ip: IP) -> bool:
    """True for globally routable unicast addresses, including IPs embedded in IPv6 forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public(embedded):
            return False
        if ip in _NAT64:  # 64:ff9b::/96 carries an IPv4 address in its low 32 bits
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified or ip.is_private)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressPolicy:
    """Which destinations are allowed: public addresses, plus allow-listed hosts and CIDRs."""

    def __init__(self, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = ()):
        self.hosts = frozenset(h.lower().rstrip(".") for h in allow_hosts)
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in allow_cidrs)

    def allows(self, host: str, ip: IP) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(ip in net for net in self.networks) or is_public(ip)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver,
                 backend: httpcore.AsyncNetworkBackend | None = None):
        self.policy, self.resolver = policy, resolver
        self.backend = backend or httpcore.AnyIOBackend()

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """The allowed addresses for ``host``; BlockedAddressError if there are none."""
        try:
            answers = [host] if _literal(host) else list(await self.resolver(host, port))
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        allowed, refused = [], []
        for answer in answers:
            ip = ipaddress.ip_address(answer.split("%")[0])  # drop an IPv6 zone id
            (allowed if self.policy.allows(host, ip) else refused).append(str(ip))
        if not allowed:
            raise BlockedAddressError(
                f"outbound request to {host!r} refused: it resolves to {refused or 'nothing'}, "
                "which is private, loopback, link-local or reserved; allow-list the host or "
                "CIDR if this destination is intended")
        return allowed

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self.checked_addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
        last: Exception | None = None
        for address in addresses:  # connect to what was checked, never re-resolve the name
            try:
                return await self.backend.connect_tcp(address, port, timeout, local_address,
                                                      socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("outbound requests over unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections go through :class:`GuardedBackend`.

    ``resolver`` is an ``async (host, port) -> [ip, ...]``; tests pass a stub here.
    """

    def __init__(self, *, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = (),
                 resolver: Resolver = system_resolver, verify: typing.Any = True,
                 http1: bool = True, http2: bool = False, limits: httpx.Limits = _LIMITS,
                 retries: int = 0):
        super().__init__(verify=verify, trust_env=False, http1=http1, http2=http2,
                         limits=limits, retries=retries)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            # Fail closed: without our pool requests would bypass the check.
            raise RuntimeError("netguard: this httpx version keeps its connection pool elsewhere; "
                               "pin httpx to a version GuardedTransport supports")
        self.backend = GuardedBackend(AddressPolicy(allow_hosts, allow_cidrs), resolver)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, http1=http1, http2=http2,
            retries=retries, network_backend=self.backend)


def guarded_client(*, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = (),
                   resolver: Resolver = system_resolver, follow_redirects: bool = False,
                   verify: typing.Any = True, **kwargs: typing.Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every connection (and followed redirect) is checked."""
    transport = GuardedTransport(allow_hosts=allow_hosts, allow_cidrs=allow_cidrs,
                                 resolver=resolver, verify=verify)
    return httpx.AsyncClient(transport=transport, follow_redirects=follow_redirects,
                             trust_env=False, **kwargs)
