"""Outbound request guard against SSRF: no private, loopback, link-local or reserved targets.

The check runs where connections are made. :class:`GuardedTransport` sends requests with aiohttp
(:mod:`bus.security.aiohttp_transport`), or with :mod:`bus.security.h1` for small plain ones,
through a :class:`GuardedResolver`: it resolves the host
once, checks every answer and hands aiohttp only the allowed addresses, so aiohttp dials exactly
what was checked and a DNS answer that changes between check and connect (DNS rebinding) cannot
redirect the connection. aiohttp dials an IP-address host without asking the resolver, so the
transport checks those before sending; as a backstop the socket factory refuses any address the
guard has not allowed. The URL is not rewritten, so Host, SNI and certificate checks still use
the hostname. Redirects are the client's business: the client
(:func:`bus.security.outbound.guarded_client`, which builds this transport on first use) does not
follow them unless asked, and each followed hop goes through the same check. Proxies and unix
sockets are not used (a proxy would make the connection on our behalf, out of reach of the check).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from bus.security.aiohttp_transport import AiohttpTransport
from bus.security.outbound import DEFAULT_LIMITS, GuardedClient, guarded_client

__all__ = ["AddressPolicy", "BlockedAddressError", "GuardedClient", "GuardedResolver",
           "GuardedTransport", "guarded_client", "is_public", "system_resolver"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


class BlockedAddressError(httpx.RequestError):
    """The destination resolves only to addresses outbound requests may not reach.

    Not an ``httpx.TransportError``: retrying cannot help, callers should treat it as permanent.
    """


async def system_resolver(host: str, port: int) -> list[str]:
    """Addresses for ``host`` from the operating system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
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
        return self.allows_host(host) or self.allows_ip(ip)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_ip(self, ip: IP) -> bool:
        return any(ip in net for net in self.networks) or is_public(ip)


def _refused(host: str, what: str) -> BlockedAddressError:
    return BlockedAddressError(
        f"outbound request to {host!r} refused: {what}, which is private, loopback, link-local "
        "or reserved; allow-list the host or CIDR if this destination is intended")


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver hook: resolve once, return only the addresses the policy allows.

    Also checks IP-address hosts (:meth:`check_host`) and every socket aiohttp opens
    (:meth:`socket`), so nothing reaches an address the policy refuses.
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver):
        self.policy, self.resolver = policy, resolver
        self._hosts: dict[str, bool] = {}  # URL host -> may be sent (names go to resolve())
        self._vouched: set[str] = set()  # addresses allowed for an allow-listed host name

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """The allowed addresses for ``host``; BlockedAddressError if there are none.

        A failed lookup is an ``OSError``, which aiohttp reports as a DNS (connect) error.
        """
        answers = list(await self.resolver(host, port))
        allowed, refused = [], []
        vouch = self.policy.allows_host(host)
        for answer in answers:
            ip = ipaddress.ip_address(answer.split("%")[0])  # drop an IPv6 zone id
            (allowed if vouch or self.policy.allows_ip(ip) else refused).append(str(ip))
        if not allowed:
            raise _refused(host, f"it resolves to {refused or 'nothing'}")
        if vouch:
            self._vouched.update(allowed)
        return allowed

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": ip, "port": port, "proto": 0,
                 "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ":" in ip else socket.AF_INET}
                for ip in await self.checked_addresses(host, port)]

    async def close(self) -> None:
        pass

    def check_host(self, host: str) -> None:
        """Refuse a URL whose host is an address the policy does not allow.

        aiohttp treats a host with a colon or only digits and dots as an address and dials it
        without resolving; those are checked here (and one that is not a plain address, such as
        ``127.1``, is refused). Names pass: :meth:`resolve` checks them.
        """
        ok = self._hosts.get(host)
        if ok is None:
            ok = self._check_literal(host)
            if len(self._hosts) >= 1024:  # bounded: a bus calls a handful of hosts
                self._hosts.clear()
            self._hosts[host] = ok
        if not ok:
            raise _refused(host, "it is not an allowed address")

    def _check_literal(self, host: str) -> bool:
        if ":" not in host and not host.replace(".", "").isdigit():
            return True
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if self.policy.allows_host(host):
            self._vouched.add(str(ip))
            return True
        return self.policy.allows_ip(ip)

    def socket(self, addr_info: tuple) -> socket.socket:
        """aiohttp's socket factory: a socket only for an address this guard allowed."""
        family, type_, proto, _, address = addr_info
        ip = ipaddress.ip_address(address[0].split("%")[0])
        if not (str(ip) in self._vouched or self.policy.allows_ip(ip)):
            raise _refused(str(ip), "the connection would reach an address never checked")
        return socket.socket(family=family, type=type_, proto=proto)


class GuardedTransport(AiohttpTransport):
    """:class:`AiohttpTransport` whose connections go only to addresses the policy allows.

    ``resolver`` is an ``async (host, port) -> [ip, ...]``; tests pass a stub here. The base
    transport asks the guard (its resolver's ``check_host``) about every URL host before sending.
    """

    def __init__(self, *, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = (),
                 resolver: Resolver = system_resolver, verify: typing.Any = True,
                 limits: httpx.Limits = DEFAULT_LIMITS):
        self.guard = GuardedResolver(AddressPolicy(allow_hosts, allow_cidrs), resolver)
        super().__init__(verify=verify, limits=limits, resolver=self.guard,
                         socket_factory=self.guard.socket)
