"""The ``http`` connector: outbound REST calls to any system.

Settings are parsed once into :class:`HttpSettings`. Two actions: ``request`` (any method, a
path with ``{placeholders}``, query, headers, JSON or text body) and ``post`` (POST the payload
as JSON to ``settings.path``). Every call carries ``Idempotency-Key`` (stable across retries)
and ``traceparent`` when the message has one.

The helpers it shares with other HTTP-based connectors (``send``, ``result_of``, ``redact``,
``where``) live in :mod:`connectors.http_calls` and are importable from here too.

With a plain client (the runtime's shared one is), a call skips httpx's per-call Request,
Response and client steps (:func:`bus.security.plain_request.plain_request`): the same
bytes on the wire, the same results and errors, a third less CPU per delivered message.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson
import structlog

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    OwnsHttpClient,
    PermanentError,
    action,
)
from connectors.http_calls import failure, redact, result_of, send, transported, where

if TYPE_CHECKING:
    from bus.security.plain_request import PlainRequest

# Plugins import these from here (CONNECTORS.md); they live in connectors.http_calls.
__all__ = ["HttpConnector", "HttpSettings", "auth_headers", "redact", "result_of", "send", "where"]

log = structlog.get_logger(__name__)

_AUTH_SCHEMA = {
    "description": "one of {bearer: TOKEN}, {basic: {username, password}}, {api_key: {header, value}}",
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["bearer"],
            "properties": {"bearer": {"type": "string", "minLength": 1}},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["basic"],
            "properties": {
                "basic": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["username", "password"],
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                }
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["api_key"],
            "properties": {
                "api_key": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["header", "value"],
                    "properties": {
                        "header": {"type": "string", "minLength": 1},
                        "value": {"type": "string", "minLength": 1},
                    },
                }
            },
        },
    ],
}

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The ``http`` connector's settings, parsed once. Secrets stay out of repr."""

    base_url: str
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    credentials: tuple[str, ...] = field(default=(), repr=False)  # bare token/password/key
    timeout: float = 10.0
    verify_tls: bool = True

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> HttpSettings:
        return cls(
            base_url=str(raw["base_url"]).rstrip("/"),
            path=raw.get("path", "/"),
            headers=dict(raw.get("headers") or {}),
            auth_headers=auth_headers(raw.get("auth")),
            credentials=tuple(_credential_values(raw.get("auth") or {})),
            timeout=float(raw.get("timeout", 10)),
            verify_tls=bool(raw.get("verify_tls", True)),
        )

    def secrets(self) -> list[str]:
        """Every string that must never show in an error or log (header values, credentials)."""
        raw = [v for v in (*self.headers.values(), *self.auth_headers.values()) if v]
        # The bare credential too: a vendor may echo the token without its "Bearer " prefix.
        raw += self.credentials
        return sorted(set(raw), key=len, reverse=True)  # longest first: no partial leftovers


def _credential_values(auth: Mapping[str, Any]) -> list[str]:
    if "bearer" in auth:
        return [str(auth["bearer"])]
    if "basic" in auth:
        return [str(auth["basic"]["password"])]
    if "api_key" in auth:
        return [str(auth["api_key"]["value"])]
    return []


def auth_headers(auth: Mapping[str, Any] | None) -> dict[str, str]:
    """The request headers for one ``auth:`` setting."""
    if not auth:
        return {}
    if "bearer" in auth:
        return {"Authorization": f"Bearer {auth['bearer']}"}
    if "basic" in auth:
        pair = f"{auth['basic']['username']}:{auth['basic']['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    key = auth["api_key"]
    return {key["header"]: key["value"]}


class HttpConnector(OwnsHttpClient, Connector):
    """Outbound REST calls to one base URL, with optional bearer, basic or API-key auth."""

    type_name = "http"
    description = "Outbound REST calls to one base URL."
    secret_fields = frozenset({"auth", "headers"})
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url"],
        "properties": {
            "base_url": {"type": "string", "pattern": "^https?://", "description": "e.g. https://api.example.com/v2"},
            "path": {"type": "string", "description": "path used by the 'post' action (default '/')"},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "extra headers on every request (treated as secrets: never logged)",
            },
            "auth": _AUTH_SCHEMA,
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds (default 10)"},
            "verify_tls": {"type": "boolean", "description": "check TLS certificates (default true)"},
        },
    }

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = HttpSettings.parse(settings)
        self._secrets = self.settings.secrets()
        self._wheres: dict[str, str] = {}
        # What httpx.Headers({**headers, **auth_headers}) holds, in its order.
        self._fixed = list({**self.settings.headers, **self.settings.auth_headers}.items())

    async def _client_ready(self) -> httpx.AsyncClient:
        if self._client is None:
            await self.start()
        assert self._client is not None
        return self._client

    @action(
        "request",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {
                "method": {"enum": _METHODS + [m.lower() for m in _METHODS]},
                "path": {"type": "string", "description": "relative to base_url; {name} from params"},
                "params": {"type": "object"},
                "query": {
                    "type": "object",
                    "additionalProperties": {
                        "type": ["string", "number", "boolean", "array"],
                        "items": {"type": ["string", "number", "boolean"]},
                    },
                },
                "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "extra headers on every request (treated as secrets: never logged)",
            },
                "json": {},
                "body": {"type": "string"},
            },
        },
        "Any HTTP request: method (default POST), path with {placeholders}, query, headers, json or body.",
    )
    async def request(self, payload: Mapping[str, Any], ctx: CallContext) -> Any:
        if "json" in payload and "body" in payload:
            raise PermanentError(
                f"connector {self.name!r} action 'request' at {ctx.step}: give either 'json' or 'body', not both"
            )
        path = self._fill(payload["path"], payload.get("params") or {}, ctx)
        return await self._call(
            payload.get("method", "POST").upper(),
            path,
            ctx,
            query=payload.get("query"),
            headers=payload.get("headers"),
            json=payload.get("json"),
            content=payload.get("body"),
            has_json="json" in payload,
        )

    @action("post", {"type": "object"}, "POST the payload as JSON to settings.path.")
    async def post(self, payload: Mapping[str, Any], ctx: CallContext) -> Any:
        return await self._call("POST", self.settings.path, ctx, json=payload, has_json=True)

    def _fill(self, path: str, params: Mapping[str, Any], ctx: CallContext) -> str:
        """``/tickets/{id}`` with ``params.id`` URL-quoted; a missing one is a permanent error."""

        def one(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in params:
                raise PermanentError(
                    f"connector {self.name!r} action 'request' at {ctx.step}: path {path!r} needs "
                    f"params.{key}; add it to the step's input"
                )
            return quote(str(params[key]), safe="")

        return _PLACEHOLDER.sub(one, path)

    async def _call(
        self,
        method: str,
        path: str,
        ctx: CallContext,
        *,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: str | None = None,
        has_json: bool = False,
    ) -> Any:
        client = await self._client_ready()
        url = self.settings.base_url + "/" + path.lstrip("/") if path else self.settings.base_url
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        data = orjson.dumps(json) if has_json else None if content is None else content.encode()
        # Imported here: aiohttp loads on the first call, not at start-up.
        from bus.security.plain_request import plain_request

        plain = plain_request(client, method, url, params=query, content=data, timeout=timeout,
                              headers=self._headers(ctx, headers, has_json))
        if plain is not None:  # the same request on the wire, without httpx's objects
            return await self._send_plain(plain, self._where(url))
        hdrs = httpx.Headers({**self.settings.headers, **self.settings.auth_headers})
        hdrs["Idempotency-Key"] = ctx.idempotency_key
        if ctx.traceparent:
            hdrs["traceparent"] = ctx.traceparent
        hdrs.update(headers or {})  # the step may override anything, on purpose
        if has_json:
            hdrs.setdefault("content-type", "application/json")
        req = client.build_request(method, url, params=query, headers=hdrs, timeout=timeout,
                                   content=data)
        return result_of(await send(client, req, name=self.name, secrets=self._secrets))

    def _headers(self, ctx: CallContext, extra: Mapping[str, str] | None,
                 has_json: bool) -> list[tuple[str, str]]:
        """The headers ``_call`` builds with httpx.Headers below, as a list: settings and auth,
        Idempotency-Key and traceparent set (replacing one given), then the step's (each
        replacing every header of its name), then a default content-type for JSON."""
        wire = list(self._fixed)
        _put(wire, "Idempotency-Key", ctx.idempotency_key)
        if ctx.traceparent:
            _put(wire, "traceparent", ctx.traceparent)
        if extra:
            given = {k.lower() for k in extra}
            wire = [item for item in wire if item[0].lower() not in given] + list(extra.items())
        if has_json and not any(k.lower() == "content-type" for k, _ in wire):
            wire.append(("content-type", "application/json"))
        return wire

    def _where(self, url: str) -> str:
        """``where()`` of ``url`` (the same with any query), remembered per URL."""
        found = self._wheres.get(url)
        if found is None:
            if len(self._wheres) >= 1024:  # bounded: path parameters may make many
                self._wheres.clear()
            found = self._wheres[url] = where(httpx.URL(url))
        return found

    async def _send_plain(self, plain: PlainRequest, place: str) -> Any:
        """``send`` and ``result_of`` for a :class:`~bus.security.plain_request.PlainRequest`
        to ``place`` (its ``where``)."""
        target = f"connector {self.name!r}: {plain.method} {place}"
        reply = await transported(plain.send(), target, self._secrets)
        log.debug("http_call", connector=self.name, method=plain.method, target=place,
                  status=reply.status_code)
        if reply.status_code >= 400:
            raise failure(reply.response(), target, self._secrets)
        body = reply.content
        if body and ("json" in reply.header("content-type") or body[:1] in (b"{", b"[")):
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                pass
        return {"status": reply.status_code, "text": reply.response().text}


def _put(headers: list[tuple[str, str]], key: str, value: str) -> None:
    """``httpx.Headers.__setitem__``: replace the first header of that name, drop the others."""
    low = key.lower()
    found = [i for i, (k, _) in enumerate(headers) if k.lower() == low]
    for i in reversed(found[1:]):
        del headers[i]
    if found:
        headers[found[0]] = (key, value)
    else:
        headers.append((key, value))
