"""VendorClient: the HTTP seam shared by vendor connectors (Zendesk, Redmine, RT, ...).

Base URL, auth headers, timeout, and every failure classified as Retryable or Permanent with
the vendor's own error text (credentials redacted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import orjson

from connectors.base import CallContext, PermanentError, RetryableError, classify_http_status
from connectors.http import redact, where
from connectors.http_calls import client_send

_HINTS = {
    401: "credentials refused: check the connector's credentials (and that the vendor's REST API is enabled)",
    403: "forbidden: the API user lacks the permission for this operation",
    404: "not found: check the id (and that the API user can see it)",
}


class VendorClient:
    """One vendor's HTTP seam: base URL, auth headers, timeout, and failures as Retryable/Permanent.

    ``message_of(parsed_body)`` returns the vendor's own error text, which goes into the error
    message (credentials are redacted); an empty answer falls back to a hint per status.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        message_of: Callable[[Any], str],
        client: httpx.AsyncClient | None = None,
        secrets: Iterable[str] = (),
    ):
        self.name, self.base_url, self.timeout, self.message_of = name, base_url.rstrip("/"), timeout, message_of
        self._headers = dict(headers)
        self._secrets = [s for s in secrets if s]
        self._client, self._owns = client, False

    def __repr__(self) -> str:
        return f"<VendorClient {self.name!r} {self.base_url}>"

    async def start(self) -> None:
        if self._client is None:
            self._client, self._owns = httpx.AsyncClient(timeout=self.timeout), True

    async def close(self) -> None:
        if self._owns and self._client is not None:
            await self._client.aclose()
            self._client, self._owns = None, False

    async def call(
        self,
        method: str,
        path: str,
        ctx: CallContext,
        action: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; return the 2xx/3xx response or raise the classified error."""
        await self.start()
        assert self._client is not None
        hdrs = {**self._headers, "Accept": "application/json", **(headers or {})}
        if ctx.traceparent:
            hdrs["traceparent"] = ctx.traceparent
        timeout = min(self.timeout, ctx.timeout) if ctx.timeout else self.timeout
        body = {} if json is None else {"content": orjson.dumps(json)}
        if json is not None:
            hdrs["Content-Type"] = "application/json"
        req = self._client.build_request(method, self.base_url + path, params=params, headers=hdrs, timeout=timeout, **body)
        target = f"connector {self.name!r} action {action!r} at {ctx.step}: {method} {where(req.url)}"
        try:
            response = await client_send(self._client, req)
        except httpx.TimeoutException:
            raise RetryableError(f"{target}: no answer within {timeout:g} s (timeout); will retry") from None
        except httpx.TransportError as exc:
            detail = redact(str(exc), self._secrets) or "no detail"
            raise RetryableError(f"{target}: {type(exc).__name__}: {detail}; is the host up?") from None
        except httpx.HTTPError as exc:  # a bad URL or header: retrying cannot help
            raise PermanentError(f"{target}: {type(exc).__name__}: {redact(str(exc), self._secrets)}") from None
        if response.status_code < 400:
            return response
        parsed = _json(response.content)
        said = self.message_of(parsed) or _HINTS.get(response.status_code) or response.text[:300]
        err = classify_http_status(response.status_code, response.headers.get("retry-after"), "")
        err.args = (f"{target}: HTTP {response.status_code}: {redact(said, self._secrets)}",)
        err.detail = parsed
        raise err


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None
