"""The connector contract kit: one reusable pytest suite every connector type must pass.

    from connectors.testing.contract import ConnectorContract

    class TestDeskContract(ConnectorContract):       # pytest collects Test* subclasses
        connector_type = DeskConnector

        def valid_settings(self, base_url):          # settings pointing at base_url
            return {"base_url": base_url, "token": SANDBOX_TOKEN}

        def make_fake_app(self):                     # a fresh fake vendor (ASGI app)
            return make_desk_app(DeskState())

        def sample_action(self):                     # succeeds against the fake
            return "create_ticket", {"subject": "hi"}

Inbound types (``events`` not empty) also implement ``signed_request(settings, now)`` (a
request signed INDEPENDENTLY of your code: the vendor's SDK or documented test vectors) and
``stale_request(settings, now)`` (None when the vendor's scheme has no timestamp). A missing
hook is a failure, not a skip: only a type that declares no events (no actions) skips the
inbound (outbound) checks.

The checks run on real loopback servers (``serve_app``) with the fake wrapped in
``with_faults``; each test method is synchronous and runs its own event loop, so the kit
works under any pytest configuration (pytest-asyncio or not).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import httpx
import jsonschema
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from structlog.testing import capture_logs

from bus.errors import ConnectorError, PermanentError, RetryableError, VerificationError
from connectors.base import CallContext, Connector, ConnectorDeps, InboundRequest
from connectors.registry import ConnectorRegistry
from connectors.testing.faults import Faults, with_faults
from connectors.testing.server import free_port, serve_app

__all__ = ["ConnectorContract", "RequestLog", "TRACEPARENT", "secret_values"]

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_CLASSIFIED = [(429, RetryableError), (500, RetryableError), (502, RetryableError),
               (503, RetryableError), (400, PermanentError), (401, PermanentError),
               (403, PermanentError), (404, PermanentError)]


class RequestLog:
    """ASGI wrapper recording every request that reached the fake: ``(method, path, headers)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.seen.append((scope["method"], scope["path"], headers))
        await self.app(scope, receive, send)


def secret_values(settings: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    """Every string (4+ chars) under the secret fields of ``settings``, nested ones included."""
    stack: list[Any] = [settings[f] for f in fields if f in settings]
    found: list[str] = []
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str) and len(value) >= 4:
            found.append(value)
    return found


def _sync(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async check in its own event loop: the kit needs no pytest-asyncio mode."""

    @functools.wraps(fn)
    def run(self: ConnectorContract, *args: Any, **kw: Any) -> None:
        asyncio.run(fn(self, *args, **kw))

    return run


class ConnectorContract:
    """Base class of a connector type's contract tests; fill in the hooks below."""

    connector_type: ClassVar[type[Connector]]
    now: ClassVar[float] = 1_700_000_000.0  # the connector's clock (deps.clock) in every check
    short_timeout: ClassVar[float] = 0.1  # seconds; the fake answers after slow_seconds
    slow_seconds: ClassVar[float] = 0.5
    require_descriptions: ClassVar[bool] = True  # every config property has a description

    # ----- hooks: the author fills these in ---------------------------------------------
    def valid_settings(self, base_url: str) -> dict[str, Any]:
        """Settings (schema-valid, sandbox credentials) pointing the connector at ``base_url``."""
        raise NotImplementedError(f"{type(self).__name__}: define valid_settings(base_url) -> dict")

    def make_fake_app(self) -> ASGIApp:
        """A fresh fake vendor app (state on the instance, not in globals)."""
        raise NotImplementedError(f"{type(self).__name__}: define make_fake_app() -> ASGI app")

    def sample_action(self) -> tuple[str, Any]:
        """``(action_name, payload)`` that succeeds against a fresh fake."""
        raise NotImplementedError(f"{type(self).__name__}: define sample_action() -> (name, payload)")

    def invalid_action(self) -> tuple[str, Any, str | None]:
        """``(action_name, payload, field)`` breaking the input schema; ``field`` must be named.

        Default: the sample payload without its action's first required field (or a list
        instead of an object when nothing is required).
        """
        name, payload = self.sample_action()
        schema = self.connector_type.actions[name].input_schema
        required = list(schema.get("required", ()))
        if required and isinstance(payload, Mapping):
            return name, {k: v for k, v in payload.items() if k != required[0]}, required[0]
        return name, ["not", "an", "object"], None

    def timeout_settings(self, base_url: str) -> dict[str, Any]:
        """``valid_settings`` with a timeout of ``short_timeout``; override if yours is not ``timeout``."""
        props = self.connector_type.config_schema.get("properties", {})
        if "timeout" not in props:
            raise NotImplementedError(
                f"{type(self).__name__}: config_schema has no 'timeout'; override timeout_settings(base_url)"
            )
        return {**self.valid_settings(base_url), "timeout": self.short_timeout}

    def wrong_credentials(self, base_url: str) -> dict[str, Any] | None:
        """Settings with wrong credentials the fake refuses; None when the type has none."""
        return None

    def signed_request(self, settings: Mapping[str, Any], now: float) -> InboundRequest:
        """A genuine request signed at ``now`` with the secret in ``settings``."""
        raise NotImplementedError(
            f"{type(self).__name__}: {self.connector_type.type_name!r} declares events; define "
            "signed_request(settings, now) signed independently (vendor SDK or test vectors)"
        )

    def unsigned_request(self, settings: Mapping[str, Any], now: float) -> InboundRequest:
        """Default: the signed request with every header but content-type removed."""
        req = self.signed_request(settings, now)
        kept = {k: v for k, v in req.headers.items() if k == "content-type"}
        return dataclasses.replace(req, headers=kept)

    def tampered_request(self, settings: Mapping[str, Any], now: float) -> InboundRequest:
        """Default: the signed request with one byte more in its body (a signature must cover it)."""
        req = self.signed_request(settings, now)
        return dataclasses.replace(req, body=req.body + b" ")

    def stale_request(self, settings: Mapping[str, Any], now: float) -> InboundRequest | None:
        """A correctly signed request from an hour ago; None if the scheme has no timestamp."""
        raise NotImplementedError(
            f"{type(self).__name__}: define stale_request(settings, now) (return None when the "
            "vendor's signature carries no timestamp)"
        )

    # ----- plumbing ----------------------------------------------------------------------
    def ctx(self, timeout: float | None = None) -> CallContext:
        return CallContext(message_id="01CONTRACT", flow="contract", step="steps[0]",
                           idempotency_key="01CONTRACT-0", traceparent=TRACEPARENT, timeout=timeout)

    def build(self, settings: Mapping[str, Any], http: httpx.AsyncClient | None = None) -> Connector:
        """Through an isolated registry, so the settings are checked against config_schema."""
        registry = ConnectorRegistry()
        registry.register(self.connector_type)
        deps = ConnectorDeps(http=http, clock=lambda: self.now)
        return registry.build("contract", self.connector_type.type_name, settings, deps)

    @asynccontextmanager
    async def fake(self) -> AsyncIterator[tuple[str, Faults, RequestLog]]:
        """The fake on loopback behind Faults; yields ``(base_url, faults, request_log)``."""
        faults = Faults()
        seen = RequestLog(with_faults(self.make_fake_app(), faults))
        async with serve_app(seen) as url:
            yield url, faults, seen

    @asynccontextmanager
    async def running(self, settings: Mapping[str, Any], inject: bool = True) -> AsyncIterator[Connector]:
        """A started connector; ``inject`` hands it a shared client as the runtime does."""
        async with httpx.AsyncClient(timeout=10) as client:
            conn = self.build(settings, client if inject else None)
            await conn.start()
            try:
                yield conn
            finally:
                await conn.close()

    async def failing_call(self, settings: Mapping[str, Any], inject: bool = True,
                           timeout: float | None = None) -> ConnectorError:
        """Run the sample action, expecting a ConnectorError; return it."""
        name, payload = self.sample_action()
        async with self.running(settings, inject) as conn:
            try:
                result = await conn.call(name, payload, self.ctx(timeout))
            except ConnectorError as exc:
                return exc
        raise AssertionError(f"action {name!r} should have failed but returned {result!r}")

    def _needs_actions(self) -> None:
        if not self.connector_type.actions:
            pytest.skip(f"type {self.connector_type.type_name!r} declares no actions")

    def _needs_events(self) -> None:
        if not self.connector_type.events:
            pytest.skip(f"type {self.connector_type.type_name!r} declares no events: nothing comes in")

    # ----- declarations ------------------------------------------------------------------
    def test_config_schema_is_closed_json_schema(self) -> None:
        """config_schema is valid Draft 2020-12 JSON Schema of an object with additionalProperties: false."""
        schema = self.connector_type.config_schema
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema.get("type") == "object", "config_schema must describe an object"
        assert schema.get("additionalProperties") is False, (
            "config_schema needs additionalProperties: false (a misspelt option must be an error)")

    def test_config_properties_are_described(self) -> None:
        """Every setting has a description (operators read them in docs and errors)."""
        if not self.require_descriptions:
            pytest.skip("require_descriptions = False on this contract")
        props = self.connector_type.config_schema.get("properties", {})
        bare = sorted(k for k, v in props.items() if not (isinstance(v, Mapping) and v.get("description")))
        assert not bare, f"settings without a description: {bare}"

    def test_secret_fields_are_settings(self) -> None:
        """Each name in secret_fields is a declared setting (a typo would leave a secret unprotected)."""
        props = set(self.connector_type.config_schema.get("properties", {}))
        assert set(self.connector_type.secret_fields) <= props, (
            f"secret_fields not in config_schema.properties: {sorted(set(self.connector_type.secret_fields) - props)}")

    def test_action_and_event_schemas_are_valid(self) -> None:
        """Every action input schema and every event schema is valid JSON Schema."""
        for name, spec in self.connector_type.actions.items():
            vcls = jsonschema.validators.validator_for(spec.input_schema, jsonschema.Draft202012Validator)
            vcls.check_schema(spec.input_schema)  # raises SchemaError naming the place
            assert spec.name == name
        for name, schema in self.connector_type.events.items():
            assert isinstance(schema, Mapping | bool), f"event {name!r}: schema must be a JSON Schema"
            jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator).check_schema(schema)

    def test_valid_settings_build(self) -> None:
        """valid_settings passes the registry's schema check and the constructor."""
        self.build(self.valid_settings("http://127.0.0.1:9"))

    # ----- outbound ----------------------------------------------------------------------
    @_sync
    async def test_sample_action_succeeds_with_traceparent(self) -> None:
        """The sample action succeeds against the fake; every request carries traceparent."""
        self._needs_actions()
        name, payload = self.sample_action()
        async with self.fake() as (url, _faults, seen):
            async with self.running(self.valid_settings(url)) as conn:
                await conn.call(name, payload, self.ctx())
        assert seen.seen, f"action {name!r} made no request to the fake"
        missing = [f"{m} {p}" for m, p, h in seen.seen if h.get("traceparent") != TRACEPARENT]
        assert not missing, f"requests without the message's traceparent: {missing}"

    @pytest.mark.parametrize(("status", "expected"), _CLASSIFIED, ids=[str(s) for s, _ in _CLASSIFIED])
    @_sync
    async def test_error_status_is_classified(self, status: int, expected: type[ConnectorError]) -> None:
        """429 and 5xx are RetryableError (429 honours Retry-After); other 4xx PermanentError."""
        self._needs_actions()
        async with self.fake() as (url, faults, _seen):
            faults.fail_next(1, status=status, retry_after=7 if status == 429 else None)
            err = await self.failing_call(self.valid_settings(url))
        assert isinstance(err, expected), f"HTTP {status} raised {type(err).__name__}: {err}"
        if status == 429:
            assert err.retry_after == 7.0, f"Retry-After: 7 gave retry_after={err.retry_after!r}"

    @pytest.mark.parametrize("inject", [True, False], ids=["shared-client", "own-client"])
    @_sync
    async def test_timeout_is_retryable(self, inject: bool) -> None:
        """A vendor slower than the timeout gives RetryableError naming the host."""
        self._needs_actions()
        async with self.fake() as (url, faults, _seen):
            faults.slow_next(1, seconds=self.slow_seconds)
            err = await self.failing_call(self.timeout_settings(url), inject, timeout=self.short_timeout)
        assert isinstance(err, RetryableError), f"timeout raised {type(err).__name__}: {err}"
        assert "127.0.0.1" in str(err), f"the error should name the host: {err}"

    @_sync
    async def test_connection_refused_is_retryable(self) -> None:
        """Nothing listening gives RetryableError naming the host."""
        self._needs_actions()
        err = await self.failing_call(self.valid_settings(f"http://127.0.0.1:{free_port()}"))
        assert isinstance(err, RetryableError), f"connection refused raised {type(err).__name__}: {err}"
        assert "127.0.0.1" in str(err), f"the error should name the host: {err}"

    @_sync
    async def test_wrong_credentials_are_permanent(self) -> None:
        """Credentials the vendor refuses give PermanentError."""
        self._needs_actions()
        async with self.fake() as (url, _faults, _seen):
            settings = self.wrong_credentials(url)
            if settings is None:
                pytest.skip("wrong_credentials() returned None: the type sends no credentials")
            err = await self.failing_call(settings)
        assert isinstance(err, PermanentError), f"refused credentials raised {type(err).__name__}: {err}"

    @_sync
    async def test_invalid_input_fails_before_any_request(self) -> None:
        """Input breaking the action's schema is a PermanentError naming the field; 0 requests made."""
        self._needs_actions()
        name, payload, field = self.invalid_action()
        async with self.fake() as (url, _faults, seen):
            async with self.running(self.valid_settings(url)) as conn:
                with pytest.raises(PermanentError) as info:
                    await conn.call(name, payload, self.ctx())
        assert not seen.seen, f"invalid input reached the vendor: {seen.seen}"
        if field:
            assert field in str(info.value), f"the error should name {field!r}: {info.value}"

    @_sync
    async def test_secrets_stay_out_of_repr_errors_and_logs(self) -> None:
        """Secret settings never show in repr(), in failed calls' errors, or in structlog events."""
        self._needs_actions()
        async with self.fake() as (url, faults, _seen):
            settings = self.valid_settings(url)
            secrets = secret_values(settings, self.connector_type.secret_fields)
            if not secrets:
                pytest.skip("valid_settings() holds no secret values")
            conn = self.build(settings)
            shown = [repr(conn)] + [repr(v) for v in vars(conn).values() if dataclasses.is_dataclass(v)]
            echo = ("echo: " + " ".join(secrets)).encode()  # vendors echo credentials back sometimes
            with capture_logs() as logs:
                for status in (401, 503):
                    faults.fail_next(1, status=status, body=b'{"error": "%s"}' % echo)
                    shown.append(str(await self.failing_call(settings)))
                faults.slow_next(1, seconds=self.slow_seconds)
                shown.append(str(await self.failing_call(self.timeout_settings(url), timeout=self.short_timeout)))
            refused = self.valid_settings(f"http://127.0.0.1:{free_port()}")
            with capture_logs() as more:
                shown.append(str(await self.failing_call(refused)))
        shown += [repr(event) for event in logs + more]
        leaks = [text for text in shown for s in secrets if s in text]
        assert not leaks, f"a secret leaked into: {leaks[0][:300]}"

    # ----- inbound -----------------------------------------------------------------------
    def inbound(self) -> tuple[Connector, dict[str, Any]]:
        self._needs_events()
        settings = self.valid_settings("http://127.0.0.1:9")
        return self.build(settings), settings

    def test_verify_accepts_signed_request(self) -> None:
        """verify() accepts a request signed independently with the configured secret."""
        conn, settings = self.inbound()
        conn.verify(self.signed_request(settings, self.now))

    @pytest.mark.parametrize("kind", ["unsigned", "tampered", "stale"])
    def test_verify_rejects_bad_signature(self, kind: str) -> None:
        """verify() raises VerificationError for a missing, wrong or stale signature."""
        conn, settings = self.inbound()
        make = {"unsigned": self.unsigned_request, "tampered": self.tampered_request,
                "stale": self.stale_request}[kind]
        req = make(settings, self.now)
        if req is None:
            pytest.skip("stale_request() returned None: the vendor's signature has no timestamp")
        with pytest.raises(VerificationError):
            conn.verify(req)

    def test_parse_yields_declared_events(self) -> None:
        """parse() of a signed request gives events the instance declares, bodies valid against their schema."""
        conn, settings = self.inbound()
        events = conn.parse(self.signed_request(settings, self.now))
        assert events, "parse() of the signed request gave no event"
        for event in events:
            assert event.name in conn.event_names(), f"undeclared event {event.name!r}"
            schema = self.connector_type.events.get(event.name, {})
            jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)(schema).validate(event.body)
