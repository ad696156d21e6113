"""What the Twilio voice and SMS connectors share: settings, REST calls, webhook verification.

REST (https://www.twilio.com/docs/usage/api, error shape from twilio-python
``twilio/base/version.py``): ``{api_base}/2010-04-01/Accounts/{AccountSid}/...json``, HTTP
basic auth ``AccountSid:AuthToken``, form-encoded POST bodies, JSON answers; errors are
``{"code": 21211, "message": "...", "more_info": "https://www.twilio.com/docs/errors/21211",
"status": 400}``.

Failures are classified as the connector contract says, and also marked *ambiguous* (in
``error.detail["ambiguous"]``) when Twilio may have acted on the request although we saw no
answer: a read timeout, a connection dropped after sending, a 5xx. A connect error, a 429 or
a 4xx are not ambiguous: Twilio created nothing.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson

from connectors.base import (
    CallContext,
    Connector,
    ConnectorDeps,
    InboundRequest,
    OwnsHttpClient,
    PayloadError,
    PermanentError,
    RetryableError,
    VerificationError,
    classify_http_status,
)
from connectors.http_calls import client_send
from connectors.http_calls import where as target
from connectors.twilio import signature

API_VERSION = "2010-04-01"

SETTINGS_PROPERTIES: dict[str, Any] = {
    "account_sid": {"type": "string", "pattern": "^AC[0-9a-fA-F]{32}$", "description": "Account SID (AC + 32 hex), the basic-auth user"},
    "auth_token": {"type": "string", "minLength": 1, "description": "Auth Token: basic-auth password and webhook signing key (secret; use ${ENV})"},
    "public_url": {"type": "string", "pattern": "^https?://", "description": "the URL Twilio calls for webhooks, as configured at Twilio (signatures cover it); default: the request URL"},
    "api_base": {"type": "string", "pattern": "^https?://", "description": "REST base URL (default https://api.twilio.com; the sandbox fake for tests)"},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds per REST call (default 10)"},
    "max_age": {"type": "number", "minimum": 0, "description": "reject webhooks whose signed Timestamp parameter is older (or newer) than this many seconds; 0 turns the check off (default 3600)"},
    "signing_key": {"type": "string", "minLength": 1, "description": "SharedKey secret, only when Twilio signs webhooks with X-Twilio-Webhooks-Signature-Settings (default: auth_token)"},
}
SECRET_FIELDS = frozenset({"auth_token", "signing_key"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """Settings shared by both Twilio connectors, parsed once; secrets stay out of repr."""

    account_sid: str
    auth_token: str = field(repr=False)
    public_url: str = ""
    api_base: str = "https://api.twilio.com"
    timeout: float = 10.0
    max_age: float = 3600.0
    signing_key: str = field(default="", repr=False)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TwilioSettings:
        return cls(
            account_sid=raw["account_sid"],
            auth_token=raw["auth_token"],
            public_url=raw.get("public_url", ""),
            api_base=str(raw.get("api_base", "https://api.twilio.com")).rstrip("/"),
            timeout=float(raw.get("timeout", 10)),
            max_age=float(raw.get("max_age", 3600)),
            signing_key=raw.get("signing_key", ""),
        )

    def secrets(self) -> list[str]:
        return [s for s in (self.auth_token, self.signing_key) if s]


def snake(name: str) -> str:
    """Twilio's parameter name in snake_case: ``CallSid`` → ``call_sid``, ``From`` → ``from``."""
    return _CAMEL.sub("_", name).lower()


def as_int(value: Any) -> int | None:
    """Twilio sends numbers as strings; ``None`` for empty or non-numeric."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text.lstrip("-").isdigit() else None


class TwilioConnector(OwnsHttpClient, Connector):
    """Base of the Twilio connectors: REST calls with basic auth, webhook verification and form parsing."""

    secret_fields = SECRET_FIELDS
    _int_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, settings: Mapping[str, Any], deps: ConnectorDeps | None = None):
        super().__init__(name, settings, deps)
        self.settings = TwilioSettings.parse(settings)
        pair = f"{self.settings.account_sid}:{self.settings.auth_token}".encode()
        self._auth = "Basic " + base64.b64encode(pair).decode()


    # ----- REST ------------------------------------------------------------------------
    def account_path(self, resource: str) -> str:
        return f"{self.settings.api_base}/{API_VERSION}/Accounts/{self.settings.account_sid}/{resource}"

    async def rest(
        self,
        method: str,
        resource: str,
        ctx: CallContext,
        action: str,
        *,
        data: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Any:
        """One REST call; the parsed JSON answer, or Retryable/Permanent errors naming action and host."""
        await self.start()
        assert self._client is not None
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if ctx.traceparent:
            headers["traceparent"] = ctx.traceparent
        timeout = min(self.settings.timeout, ctx.timeout) if ctx.timeout else self.settings.timeout
        url = self.account_path(resource)
        req = self._client.build_request(method, url, data=data, params=query, headers=headers, timeout=timeout)
        where = f"connector {self.name!r} action {action!r} at {ctx.step}: {method} {target(req.url)}"
        try:
            resp = await client_send(self._client, req)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RetryableError(f"{where}: {type(exc).__name__}: could not connect (is api_base right?)",
                                 detail={"ambiguous": False}) from None
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{where}: timed out waiting for Twilio ({type(exc).__name__})",
                                 detail={"ambiguous": True}) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise RetryableError(f"{where}: connection lost ({type(exc).__name__})", detail={"ambiguous": True}) from None
        except httpx.HTTPError as exc:
            raise PermanentError(f"{where}: {type(exc).__name__}: {self._redact(str(exc))}") from None
        if resp.status_code >= 400:
            raise self._http_error(resp, where)
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise RetryableError(f"{where}: HTTP {resp.status_code} but the answer is not JSON",
                                 detail={"ambiguous": True}) from None

    def _http_error(self, resp: httpx.Response, where: str) -> Exception:
        """The classified error, with Twilio's own ``code`` and ``message`` when it sent them."""
        code, text = None, self._redact(resp.text[:300])
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and body.get("message"):
            code = body.get("code")
            text = f"Twilio error {code}: {self._redact(str(body['message']))}"
            if body.get("more_info"):
                text += f" (see {body['more_info']})"
        err = classify_http_status(resp.status_code, resp.headers.get("retry-after"), text)
        err.args = (f"{where}: {err.args[0]}",)
        err.detail = {"ambiguous": resp.status_code >= 500, "twilio_code": code}
        return err

    def _redact(self, text: str) -> str:
        for secret in self.settings.secrets():
            text = text.replace(secret, "***")
        return text

    # ----- inbound ---------------------------------------------------------------------
    def signed_url(self, request: InboundRequest) -> str:
        """The URL Twilio signed: ``public_url`` plus the request's query, else the request URL."""
        if not self.settings.public_url:
            return request.url
        query = urlsplit(request.url).query
        if query and "?" not in self.settings.public_url:
            return f"{self.settings.public_url}?{query}"
        return self.settings.public_url

    def verify(self, request: InboundRequest) -> None:
        url = self.signed_url(request)
        algorithm = signature.algorithm_of(request.header(signature.SETTINGS_HEADER))
        key = self.settings.signing_key or self.settings.auth_token
        given = request.header(signature.SIGNATURE_HEADER)
        if _is_json(request):
            signature.verify_signature(key, url, given, body=request.body, algorithm=algorithm)
        else:
            pairs = _form_pairs(request) if request.method.upper() == "POST" else []
            signature.verify_signature(key, url, given, params=pairs, algorithm=algorithm)
        try:
            stamp = self.params(request).get("Timestamp")
        except PayloadError:
            return  # authentic but malformed: parse() reports it
        self._check_age(stamp)

    def _check_age(self, stamp: str | None) -> None:
        """Twilio signatures carry no time; the signed ``Timestamp`` parameter bounds replays."""
        if not stamp or not self.settings.max_age:
            return
        try:
            when = parsedate_to_datetime(stamp).timestamp()
        except (TypeError, ValueError):
            raise VerificationError(f"bad Timestamp parameter {stamp[:40]!r}: expected RFC 2822 date") from None
        age = self.deps.clock() - when
        if abs(age) > self.settings.max_age:
            side = "old" if age > 0 else "far in the future"
            raise VerificationError(
                f"Timestamp parameter too {side}: {abs(age):.0f} s from now, max_age is "
                f"{self.settings.max_age:g} s (a replay, or a clock is wrong)"
            )

    def params(self, request: InboundRequest) -> dict[str, str]:
        """The webhook's parameters (form body, JSON object or GET query), original names."""
        if _is_json(request):
            try:
                data = orjson.loads(request.body)
            except orjson.JSONDecodeError as exc:
                raise PayloadError(f"connector {self.name!r}: JSON body is invalid: {exc.msg}") from None
            if not isinstance(data, dict):
                raise PayloadError(f"connector {self.name!r}: JSON body must be an object of Twilio parameters")
            return {k: "" if v is None else str(v) for k, v in data.items()}
        if request.method.upper() == "POST":
            return dict(_form_pairs(request))
        return dict(request.query)

    def snake_body(self, params: Mapping[str, str], renames: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Parameters under snake_case names; ``_int_params`` converted to int (None when absent)."""
        body: dict[str, Any] = {}
        for key, value in params.items():
            name = (renames or {}).get(key) or snake(key)
            body[name] = as_int(value) if key in self._int_params else value
        return body


def _is_json(request: InboundRequest) -> bool:
    return "json" in request.header("content-type").lower()


def _form_pairs(request: InboundRequest) -> list[tuple[str, str]]:
    try:
        return parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise PayloadError("form body is not UTF-8 (Twilio sends UTF-8 application/x-www-form-urlencoded)") from None
