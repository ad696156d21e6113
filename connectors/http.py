"""The ``http`` connector: outbound REST calls to any system.

Settings are parsed once into :class:`HttpSettings`. Two actions: ``request`` (any method, a
path with ``{placeholders}``, query, headers, JSON or text body) and ``post`` (POST the payload
as JSON to ``settings.path``). Every call carries ``Idempotency-Key`` (stable across retries)
and ``traceparent`` when the message has one.

The helpers :func:`send` and :func:`result_of` are shared with other HTTP-based connectors:
they turn transport failures and error statuses into Retryable/Permanent errors.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
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
    RetryableError,
    action,
    classify_http_status,
)

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


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (vendors echo credentials back sometimes)."""
    for secret in secrets:
        if len(secret) >= 4:  # a 1-3 character "secret" would blank out ordinary text
            text = text.replace(secret, "***")
    return text


def where(url: httpx.URL) -> str:
    """``METHOD``-free description of a target: scheme, host, port and path; no userinfo, no query."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


async def send(
    client: httpx.AsyncClient, request: httpx.Request, *, name: str, secrets: Iterable[str] = ()
) -> httpx.Response:
    """Send ``request``; raise Retryable/Permanent errors naming connector and host, never secrets."""
    target = f"connector {name!r}: {request.method} {where(request.url)}"
    try:
        response = await client.send(request)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{target}: timed out ({type(exc).__name__})") from None
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        detail = redact(str(exc), secrets) or "no detail"
        raise RetryableError(f"{target}: {type(exc).__name__}: {detail}") from None
    except httpx.HTTPError as exc:  # bad URL or header, unsupported scheme: a retry cannot help
        detail = redact(str(exc), secrets) or "no detail"
        raise PermanentError(f"{target}: {type(exc).__name__}: {detail}") from None
    log.debug("http_call", connector=name, method=request.method, target=where(request.url),
              status=response.status_code)
    if response.status_code >= 400:
        err = classify_http_status(
            response.status_code, response.headers.get("retry-after"), redact(response.text, secrets)
        )
        err.args = (f"{target}: {err.args[0]}",)
        raise err
    return response


def result_of(response: httpx.Response) -> Any:
    """The parsed JSON body, or ``{"status", "text"}`` when the body is not JSON."""
    content = response.content
    if content and ("json" in response.headers.get("content-type", "") or content[:1] in (b"{", b"[")):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return {"status": response.status_code, "text": response.text}


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
        hdrs = httpx.Headers({**self.settings.headers, **self.settings.auth_headers})
        hdrs["Idempotency-Key"] = ctx.idempotency_key
        if ctx.traceparent:
            hdrs["traceparent"] = ctx.traceparent
        hdrs.update(headers or {})  # the step may override anything, on purpose
        url = self.settings.base_url + "/" + path.lstrip("/") if path else self.settings.base_url
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        body: dict[str, Any] = {}
        if has_json:
            body["content"] = orjson.dumps(json)
            hdrs.setdefault("content-type", "application/json")
        elif content is not None:
            body["content"] = content.encode()
        req = client.build_request(method, url, params=query, headers=hdrs, timeout=timeout, **body)
        secrets = self.settings.secrets()
        return result_of(await send(client, req, name=self.name, secrets=secrets))
