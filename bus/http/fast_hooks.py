"""Webhooks answered straight off uvicorn's HTTP parser, without the ASGI cycle or Starlette.

A signed webhook is the request tieline takes most. On the bench machine uvicorn's ASGI
cycle (scope, receive/send coroutines, header checks) and Starlette's middleware and router
cost ~40 µs a request: more than tieline spends verifying the signature and handing the
message to the commit (bench/RESULTS.md, "Findings, session 14"). So :class:`HookProtocol`, a
subclass of uvicorn's httptools protocol, takes ``POST|GET /hooks/{connector}`` itself: it
reads the body, asks the same :class:`~bus.http.hooks.HookDesk` the Starlette route asks, and
writes the answer. The checks the middleware makes for that route are made here in the same
order: header limits (431), the shared rate limiter (429), and the request counter.

Everything else goes through uvicorn's ASGI cycle unchanged, and so does any hook request
this path would not see exactly as the ASGI stack does: a percent-encoded path, proxy headers
(uvicorn's ProxyHeadersMiddleware rewrites the client address from them), an upgrade, a
``root_path``. Keep-alive, pipelining, the keep-alive timeout, graceful shutdown and TLS stay
uvicorn's: a :class:`HookCycle` stands in uvicorn's request-cycle slot with the attributes
the protocol reads (``body``, ``more_body``, ``message_event``, ``response_complete``,
``disconnected``, ``keep_alive``) and the ``run_asgi`` its pipeline calls. The uvicorn
version is pinned in pyproject.toml for that; tests/bus/http/test_fast_hooks.py compares the
two paths answer by answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httptools
import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bus.http.answer import Answer, refusal
from bus.http.body import BodyTooLarge
from bus.http.hooks import TEMPLATE, HookDesk, HookRequest, query_of, url_of
from bus.http.limits import RateLimiter, client_key, header_refusal

if TYPE_CHECKING:
    from bus.runtime import Runtime

log = structlog.get_logger("tieline.http")

PREFIX = b"/hooks/"
# Headers uvicorn's ProxyHeadersMiddleware acts on: such a request takes the ASGI path.
PROXY_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})
JSON_TYPE = b"content-type: application/json\r\n"


class HookFront:
    """What every connection's protocol shares: the desk, the limits, the counter."""

    def __init__(self, runtime: Runtime, rate_limiter: RateLimiter | None):
        self.runtime = runtime
        self.desk = HookDesk(runtime)
        self.rate_limiter = rate_limiter
        http = runtime.config.settings.http
        self.max_body = http.max_body_bytes
        self.public_url = http.public_url or ""

    def count(self, status: int) -> None:
        m = self.runtime.metrics
        m.child(m.ingress, TEMPLATE, str(status)).inc()


class HookCycle:
    """One hook request on a connection, in the slot uvicorn keeps for its request cycle."""

    __slots__ = ("proto", "front", "connector", "method", "path", "query", "headers",
                 "chunks", "size", "too_large", "more_body", "message_event", "response_complete",
                 "disconnected", "keep_alive", "waiting_for_100_continue", "on_response")

    def __init__(self, proto: HookProtocol, front: HookFront, connector: str, method: str,
                 path: str, query: bytes, keep_alive: bool):
        self.proto, self.front = proto, front
        self.connector, self.method, self.path, self.query = connector, method, path, query
        self.headers = proto.headers
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.more_body = True
        self.message_event = asyncio.Event()
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = proto.expect_100_continue
        self.on_response = proto.on_response_complete

    def feed(self, chunk: bytes) -> None:
        if self.too_large or self.response_complete:  # refused before its body came: drop it
            return
        self.size += len(chunk)
        if self.size > self.front.max_body:
            self.too_large, self.chunks = True, []  # read on, keep nothing
        else:
            self.chunks.append(chunk)
        self.message_event.set()

    def finish(self) -> None:
        self.more_body = False
        self.message_event.set()

    async def run_asgi(self, app: Any) -> None:
        """Named as uvicorn's cycle method: its pipeline starts queued cycles through it."""
        try:
            answer = await self._answer()
            if answer is not None and not self.disconnected:
                await self._write(answer)
        except Exception:
            log.exception("hook_failed", method=self.method, path=self.path)
            if not self.response_complete and not self.disconnected:
                await self._write(refusal(500, "internal_error", "the request failed inside "
                                          "tieline; the log has the traceback"))
        finally:
            self.on_response = _nothing

    async def _answer(self) -> Answer | None:
        front, proto = self.front, self.proto
        refused = header_refusal(self.headers)
        if refused is None and front.rate_limiter is not None:
            refused = front.rate_limiter.refusal(
                client_key(self.headers, proto.client[0] if proto.client else None), TEMPLATE)
        if refused is not None:
            return refused
        declared = _content_length(self.headers)
        if declared is not None and declared > front.max_body:
            self.too_large, self.chunks = True, []  # refused unread, as the ASGI route does
        else:
            if self.waiting_for_100_continue and self.more_body:
                proto.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            proto.flow.resume_reading()  # paused if this request waited in the pipeline
            while self.more_body and not self.disconnected:
                self.message_event.clear()
                await self.message_event.wait()
            if self.disconnected:
                return None
        self.waiting_for_100_continue = False
        body: bytes | BodyTooLarge = (BodyTooLarge(front.max_body) if self.too_large else
                                      self.chunks[0] if len(self.chunks) == 1 else
                                      b"".join(self.chunks))
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        host = next((v for k, v in self.headers if k == b"host"), None)
        url, path = url_of(proto.scheme or "http", proto.server, host, self.path, self.query,
                           front.public_url)
        client_ip = proto.client[0] if proto.client else ""
        return await front.desk.take(HookRequest(self.connector, self.method, url, path, headers,
                                                 query_of(self.query), body, client_ip))

    async def _write(self, answer: Answer) -> None:
        proto = self.proto
        if proto.flow.write_paused and not self.disconnected:
            await proto.flow.drain()
        if self.disconnected:
            return
        head = [STATUS_LINE[answer.status]]
        for name, value in proto.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        head += (JSON_TYPE, b"content-length: ", str(len(answer.body)).encode(), b"\r\n")
        for name, value in answer.headers:
            head += (name.lower().encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", answer.body)
        proto.transport.write(b"".join(head))
        self.front.count(answer.status)
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            proto.transport.close()
        self.on_response()


def _nothing() -> None:
    pass


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class HookProtocol(HttpToolsProtocol):
    """uvicorn's protocol, answering webhook requests itself (see the module docstring)."""

    front: HookFront  # set on the subclass :func:`hook_protocol` makes

    def on_headers_complete(self) -> None:
        cycle = self._hook_cycle()
        if cycle is None:
            super().on_headers_complete()
            return
        previous = self.cycle
        self.cycle = cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            task = self.loop.create_task(cycle.run_asgi(None))
            task.add_done_callback(self.tasks.discard)  # uvicorn's shutdown waits for these
            self.tasks.add(task)
        else:  # pipelined behind a request still being answered: uvicorn starts it after
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def _hook_cycle(self) -> HookCycle | None:
        """A cycle for this request when the fast path may take it, else None."""
        parser = self.parser
        method = parser.get_method()
        if method not in (b"POST", b"GET") or not self.url.startswith(PREFIX):
            return None
        if self.root_path or self.limit_concurrency is not None or parser.should_upgrade():
            return None
        url = httptools.parse_url(self.url)
        name = url.path[len(PREFIX):]
        if not name or b"/" in name or b"%" in name:
            return None
        if any(k in PROXY_HEADERS for k, _ in self.headers):
            return None
        version = parser.get_http_version()
        self.scope["method"] = method.decode("ascii")  # uvicorn's shutdown and logs read these
        self.scope["path"] = path = url.path.decode("ascii")
        keep_alive = version != "1.0" and parser.should_keep_alive()
        return HookCycle(self, self.front, name.decode("ascii"), self.scope["method"], path,
                         url.query or b"", keep_alive)

    def on_body(self, body: bytes) -> None:
        if isinstance(self.cycle, HookCycle):
            self.cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if isinstance(self.cycle, HookCycle):
            self.cycle.finish()
        else:
            super().on_message_complete()


def hook_protocol(runtime: Runtime, app: Any) -> type[HookProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` serving ``app`` (from
    ``bus.http.app.build_app(runtime)``) with its webhooks on the fast path."""
    front = HookFront(runtime, getattr(app.state, "rate_limiter", None))
    return type("HookProtocol", (HookProtocol,), {"front": front})
