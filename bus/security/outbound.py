"""The shared outbound client, built without importing aiohttp.

aiohttp, and the TLS contexts it and the client make, cost about a quarter of a second to load:
a third of start-up. Ingress does not need them, so :func:`guarded_client` returns an
``httpx.AsyncClient`` whose transport is built on the first request, or earlier by
:meth:`GuardedClient.warm_up` in a thread once the bus is serving. The guard itself
(:mod:`bus.security.netguard`) is unchanged; only when it is loaded moves.
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Callable, Iterable

import httpx

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class LazyTransport(httpx.AsyncBaseTransport):
    """Builds the real transport on first use (thread-safe, so a warm-up thread may build it)."""

    def __init__(self, build: Callable[[], httpx.AsyncBaseTransport]):
        self._build = build
        self._real: httpx.AsyncBaseTransport | None = None
        self._lock = threading.Lock()

    def real(self) -> httpx.AsyncBaseTransport:
        if self._real is None:
            with self._lock:
                if self._real is None:
                    self._real = self._build()
        return self._real

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await (self._real or self.real()).handle_async_request(request)

    async def aclose(self) -> None:
        if self._real is not None:
            await self._real.aclose()


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing from responses."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class GuardedClient(httpx.AsyncClient):
    """The client :func:`guarded_client` returns; it remembers how it was built.

    It keeps no cookies from responses: shared by every connector, it must not send one
    connector's session cookie along with another's calls to the same host (and parsing
    ``Set-Cookie`` on every response cost a fifth of the client's CPU). Cookies given to the
    client, or per request, are still sent.
    """

    def __init__(self, options: dict[str, typing.Any], transport: LazyTransport,
                 **kwargs: typing.Any):
        self.options, self.lazy = options, transport
        super().__init__(transport=transport, **kwargs)
        self.cookies = kwargs.get("cookies")

    @property
    def cookies(self) -> httpx.Cookies:
        return self._kept

    @cookies.setter
    def cookies(self, cookies: typing.Any) -> None:
        self._kept = _NoCookies(cookies)  # given ones are sent; answers add none

    def unverified(self) -> GuardedClient:
        """A new client with the same address policy and settings that does not verify TLS
        certificates (for a host with a self-signed certificate); the caller closes it."""
        return guarded_client(**{**self.options, "verify": False})

    def warm_up(self) -> threading.Thread:
        """Load aiohttp and build the transport in a daemon thread, off the request path."""
        thread = threading.Thread(target=self.lazy.real, name="outbound-warm-up", daemon=True)
        thread.start()
        return thread


def guarded_client(*, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = (),
                   resolver: typing.Any = None, follow_redirects: bool = False,
                   verify: typing.Any = True, limits: httpx.Limits = DEFAULT_LIMITS,
                   **kwargs: typing.Any) -> GuardedClient:
    """An ``httpx.AsyncClient`` whose every connection (and followed redirect) is checked by
    :class:`bus.security.netguard.GuardedTransport`; ``resolver`` (tests) replaces the
    system's: an ``async (host, port) -> [ip, ...]``."""
    options = dict(allow_hosts=allow_hosts, allow_cidrs=allow_cidrs, resolver=resolver,
                   follow_redirects=follow_redirects, verify=verify, limits=limits, **kwargs)

    def build() -> httpx.AsyncBaseTransport:
        from bus.security.netguard import GuardedTransport, system_resolver

        return GuardedTransport(allow_hosts=allow_hosts, allow_cidrs=allow_cidrs,
                                resolver=resolver or system_resolver, verify=verify,
                                limits=limits)

    return GuardedClient(options, LazyTransport(build), follow_redirects=follow_redirects,
                         trust_env=False, **kwargs)
