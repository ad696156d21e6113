"""The runtime: wires configuration, connectors, transport, runner and HTTP server together."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import httpx
import structlog

from bus.audit import AuditLog
from bus.config.loader import load_config
from bus.config.model import Config, ConnectorConfig
from bus.errors import TielineError
from bus.flow import CompiledFlow, compile_all
from bus.ingress import Ingress
from bus.metrics import Metrics, flow_slots, transport_readings
from bus.observe import Observers
from bus.runner import FlowRunner
from bus.stats import Stats
from bus.transport.base import Transport
from connectors.base import Connector, ConnectorDeps
from connectors.registry import ConnectorRegistry

log = structlog.get_logger("tieline.runtime")


def build_transport(config: Config, *, shared: bool = False) -> Transport:
    """The configured transport; ``shared``: other processes use the same embedded file too
    (serve and worker roles, ``settings.workers``, the CLI beside a running bus)."""
    s = config.settings
    if s.transport == "embedded":
        from bus.transport.sqlite import SqliteTransport

        s.data_dir.mkdir(parents=True, exist_ok=True)
        return SqliteTransport(
            s.data_dir / "tieline.db",
            backlog_limit=s.backlog_limit,
            dedupe_window=s.dedupe_window,
            retention=s.retention,
            sync=s.sync,
            shared=shared,
        )
    if s.transport == "rabbitmq":
        from bus.transport.rabbitmq import RabbitTransport

        return RabbitTransport(
            s.amqp_url,
            s.redis_url,
            prefix=s.broker_prefix,
            flows=list(config.flows),
            backlog_limit=s.backlog_limit,
            dedupe_window=s.dedupe_window,
        )
    raise TielineError(f"transport {s.transport!r} is not available in this build")


def outbound_client(config: Config) -> httpx.AsyncClient:
    """The HTTP client connectors share: it refuses private, loopback, link-local and reserved
    addresses at connect time unless allow-listed (``settings.outbound.allow``). With the sandbox
    on, exactly the bus's own host is allow-listed, so the shipped flows can call their fakes.
    """
    import ipaddress
    from urllib.parse import urlsplit

    from bus.security.outbound import guarded_client

    s = config.settings
    allowed = list(s.outbound_allow)
    if s.sandbox:
        allowed.append(urlsplit(s.http.public_url or f"http://{s.http.host}").hostname or s.http.host)
    hosts, cidrs = [], []
    for item in allowed:
        try:
            cidrs.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            hosts.append(item)
    return guarded_client(
        allow_hosts=hosts, allow_cidrs=cidrs, follow_redirects=s.follow_redirects,
        timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=200),
    )


class Runtime:
    """One bus: ``start()`` opens connectors and transport and (optionally) starts consuming."""

    def __init__(
        self,
        config: Config,
        registry: ConnectorRegistry,
        *,
        transport: Transport | None = None,
        http: httpx.AsyncClient | None = None,
        connectors: Mapping[str, Connector] | None = None,
        shared: bool = False,
    ):
        """``connectors`` replaces the instances built from the config (flow tests use mocks);
        ``shared``: other processes use the embedded file too (see ``build_transport``)."""
        self.config = config
        self.registry = registry
        self.flows: Mapping[str, CompiledFlow] = compile_all(config)
        self.transport = transport or build_transport(config, shared=shared)
        self._own_http = http is None
        self.http = http or outbound_client(config)
        self.connectors: dict[str, Connector] = dict(connectors) if connectors is not None else {
            name: self.build_connector(name, cc) for name, cc in config.connectors.items()
        }
        self.metrics = Metrics()
        self.stats = Stats()
        self.observers = Observers([self.metrics, self.stats])
        self.metrics.on_scrape(lambda m: transport_readings(m, self.transport, list(self.flows)))
        self.metrics.on_scrape(lambda m: flow_slots(m, self._slots()))
        self.ingress = Ingress(self.flows, self.connectors, self.transport, self.observers)
        self.runner = FlowRunner(self.flows, self.connectors, self.transport, observer=self.observers)
        self.ready = False
        self.consuming = False  # this process runs the flows (not the serve role)
        self.supervisor = None  # bus.supervisor.Supervisor of `tieline run` with workers
        self.security = None
        if config.security:  # imported only then: JWT and crypto cost ~0.15 s of start-up
            from bus.security.setup import build_security

            self.security = build_security(config.security)
        self.guard = self.security.guard if self.security else None
        self.disabled: set[str] = {n for n, cf in self.flows.items() if not cf.flow.enabled}
        self.audit = AuditLog(config.settings.data_dir / "audit.jsonl")
        self.reloader = None  # set by serve()/work() when they know the config file
        self.env: Mapping[str, str] | None = None
        self.on_apply: list = []  # callables run after a reload is applied

    @classmethod
    def from_file(
        cls, path: str | Path, *, env: Mapping[str, str] | None = None,
        workers: int | None = None, **kw: object,
    ) -> Runtime:
        """``workers`` overrides ``settings.workers`` (``tieline run --workers``)."""
        registry = ConnectorRegistry.from_entry_points()
        config = load_config(path, connector_types=registry.types, env=env)
        if workers is not None:
            config = replace(config, settings=replace(config.settings, workers=workers))
        kw.setdefault("shared", config.settings.workers > 0)
        runtime = cls(config, registry, **kw)  # type: ignore[arg-type]
        runtime.env = env  # a reload reads the same environment
        return runtime

    async def start(self, *, consume: bool = True) -> None:
        for c in self.connectors.values():
            await c.start()
        await self.transport.start()
        if consume:
            self.runner.start()
        self.consuming = consume
        self.ready = True
        log.info("bus_started", flows=len(self.flows), connectors=len(self.connectors))

    async def stop(self, timeout: float = 10.0) -> None:
        self.ready = False
        await self.transport.close(timeout)
        for c in self.connectors.values():
            await c.close()
        if self._own_http:
            await self.http.aclose()
        log.info("bus_stopped")

    def build_connector(self, name: str, cc: ConnectorConfig) -> Connector:
        return self.registry.build(name, cc.type, cc.settings, ConnectorDeps(http=self.http))

    def apply(
        self, config: Config, flows: Mapping[str, CompiledFlow], connectors: Mapping[str, Connector]
    ) -> None:
        """Switch to a new, already validated configuration (see bus/reload.py)."""
        added = [n for n in flows if n not in self.flows]
        self.config, self.flows, self.connectors = config, flows, dict(connectors)
        self.disabled = {n for n in self.disabled if n in flows} | {
            n for n, cf in flows.items() if not cf.flow.enabled
        }
        ingress = Ingress(flows, self.connectors, self.transport, self.observers)
        ingress.disabled = self.disabled
        self.ingress = ingress
        self.runner.update(flows, self.connectors)
        for hook in self.on_apply:  # e.g. the HTTP app re-reads the sync-flow routes
            hook()
        if self.ready and self.consuming:
            for name in added:
                cf = flows[name]
                if cf.flow.enabled:
                    self.transport.consume(name, self.runner.handle, concurrency=cf.flow.concurrency)

    def _slots(self) -> dict[str, int]:
        """Handler slots per flow this process consumes (the serve role consumes none)."""
        if not self.consuming:
            return {}
        return {name: cf.flow.concurrency for name, cf in self.flows.items() if cf.flow.enabled}

    # ----- operator switches -------------------------------------------------------------
    def is_enabled(self, flow: str) -> bool:
        return flow not in self.disabled

    def set_enabled(self, flow: str, enabled: bool) -> None:
        """A disabled flow takes no new messages (ingress skips it); queued ones still run."""
        (self.disabled.discard if enabled else self.disabled.add)(flow)
        self.ingress.disabled = self.disabled

    def reloader_for_api(self):  # noqa: ANN201 - bus.reload.Reloader
        """The reloader of this runtime (made on first use from the config it was loaded from)."""
        if self.reloader is None:
            from bus.reload import Reloader

            self.reloader = Reloader(self, self.config.source, self.env)
        return self.reloader

    def connector_state(self, name: str) -> dict:
        """Circuit-breaker state of a connector, when it declares one (API and dashboard)."""
        breaker = self.runner.calls.breakers.by_connector.get(name)
        return {"circuit": breaker.state} if breaker is not None else {}

    # ----- dead letters ----------------------------------------------------------------
    async def replay(self, message_id: str) -> bool:
        """Replay a dead letter on the current definition of its flow, from the failed step."""
        dl = await self.transport.dead_letter(message_id)
        if dl is None:
            return False
        env = dl.envelope
        cf = self.flows.get(env.flow)
        if cf is not None:
            cursor = env.cursor if env.cursor < len(cf.program) else 0
            env = env.evolve(flow_version=cf.version, cursor=cursor)
        return await self.transport.replay(message_id, env.evolve(attempt=1))

    async def replay_all(self, *, flow: str | None = None) -> list[str]:
        done = []
        for dl in await self.transport.dead_letters(flow=flow, limit=1_000_000):
            if await self.replay(dl.message_id):
                done.append(dl.message_id)
        return done

    # ----- serving ----------------------------------------------------------------------
    async def serve(
        self, host: str | None = None, port: int | None = None, *, consume: bool = True,
        watch: bool = False, config_path: Path | None = None,
        tls_files: tuple[str, str] | None = None,
    ) -> None:
        """Start, serve HTTP until SIGINT/SIGTERM, then stop gracefully.

        ``consume=False`` is the ``serve`` role (ingress only); SIGHUP reloads the configuration,
        and so do file changes with ``watch``.
        """
        import uvicorn

        from bus.http.app import build_app
        from bus.http.fast_hooks import hook_protocol

        http = self.config.settings.http
        tls: dict = {}
        cert, key = tls_files or (http.tls_cert, http.tls_key)
        if cert and key:
            from bus.security.tls import server_ssl_context, uvicorn_ssl

            tls = uvicorn_ssl(server_ssl_context(cert, key, min_version=http.tls_min_version))
        app = build_app(self)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                http=hook_protocol(self, app),  # webhooks skip the ASGI cycle (fast_hooks)
                host=host or http.host,
                port=port if port is not None else http.port,
                log_level="warning",
                lifespan="off",
                ws="none",  # no WebSocket routes; spares loading a WebSocket stack at start
                access_log=False,
                **tls,
            )
        )
        sockets = None
        if self.config.settings.transport != "embedded" or not consume:
            # Several `tieline serve` processes may share one port (the kernel spreads the
            # connections): with a broker, or on an embedded file they share, there is no
            # per-process state to keep apart. A process alone on its file keeps the plain
            # bind, so a second one fails at once instead of sharing the port.
            sockets = [_shared_listener(server.config.host, server.config.port)]
        await self.start(consume=consume)
        background = self._reload_triggers(config_path, watch)
        background.append(asyncio.ensure_future(self._warm_up_outbound(server)))
        try:
            if self.supervisor is not None:
                await self.supervisor.start()
            await server.serve(sockets=sockets)
        finally:
            for task in background:
                task.cancel()
            if self.supervisor is not None:  # the workers finish what they hold first
                await self.supervisor.stop()
            await self.stop()

    async def work(self, *, watch: bool = False, config_path: Path | None = None) -> None:
        """The ``worker`` role: consume and process until SIGINT/SIGTERM; no HTTP."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start(consume=True)
        background = self._reload_triggers(config_path, watch)
        from bus.supervisor import watch_parent

        background.append(asyncio.ensure_future(watch_parent(stop)))
        from bus.worker_reports import report_forever  # the serving processes show its numbers

        background.append(asyncio.ensure_future(report_forever(self)))
        try:
            await stop.wait()
        finally:
            for task in background:
                task.cancel()
            await self.stop()

    async def _warm_up_outbound(self, server: object) -> None:
        """Load the outbound client's I/O stack (aiohttp) once the server listens, so start-up
        does not wait for it and the first delivery rarely does (it builds it if still absent)."""
        while not getattr(server, "started", True):
            await asyncio.sleep(0.05)
        warm_up = getattr(self.http, "warm_up", None)
        if warm_up is not None:
            warm_up()

    def _reload_triggers(self, config_path: Path | None, watch: bool) -> list[asyncio.Task]:
        if config_path is None:
            return []
        from bus.reload import Reloader

        self.reloader = Reloader(self, config_path, self.env)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task] = []
        loop.add_signal_handler(
            signal.SIGHUP, lambda: tasks.append(asyncio.ensure_future(self.reloader.reload()))
        )
        if watch:
            tasks.append(asyncio.ensure_future(self.reloader.watch()))
        return tasks


def _shared_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT, so other processes can bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):  # Linux and the BSDs; elsewhere one process per port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TielineError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock
