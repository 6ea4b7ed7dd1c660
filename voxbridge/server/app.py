"""The ASGI application: Twilio routes, health, readiness, metrics, and the call per WebSocket.

| route                 | what                                                              |
|-----------------------|-------------------------------------------------------------------|
| ``POST /twilio/voice``| TwiML ``<Connect><Stream url="wss://.../twilio/media">``           |
| ``WS /twilio/media``  | one call: admission, then :class:`voxbridge.session.Call`          |
| ``GET /healthz``      | 200 while the process is alive                                     |
| ``GET /readyz``       | 200 when accepting calls; 503 while draining or at ``max_calls``   |
| ``GET /metrics``      | Prometheus text format                                             |

Rejections before accept (capacity, draining) are HTTP responses through the ASGI
``websocket.http.response`` extension, never an upgraded socket (docs/library-notes.md,
"Rejecting before accept").

The lifespan starts what the app needs for its whole life -- the built-in echo agent when the
provider is ``echo`` -- so the same app works under ``voxbridge serve`` and under
``hypercorn -k trio voxbridge.asgi:app``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import trio
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import Reason
from ..journal import CallJournal, MemoryJournal
from ..metrics import Metrics
from ..providers.base import Provider
from ..providers.registry import provider_for
from ..session.call import Call
from ..session.registry import CallRegistry
from ..settings import Settings
from ..testing.echo_agent import EchoAgent
from ..upstream import StreamConnector
from .asgi_carrier import AsgiCarrier

__all__ = ["VoxbridgeApp"]

log = logging.getLogger("voxbridge.server")

Scope = dict[str, Any]
Receive = Any
Send = Any

MEDIA_PATH = "/twilio/media"
MAX_BODY = 64 * 1024
BODY_TIMEOUT = 10.0


class VoxbridgeApp:
    """The voxbridge ASGI app.

    Args:
        settings: process settings.
        metrics: metric families (and their registry); a private registry if omitted.
        registry: the calls this app runs.
        provider: the provider; built from ``settings`` at startup if omitted.
        journal: where calls are recorded; in memory if omitted.
        connect_stream: how calls open provider streams (tests inject memory streams).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        registry: CallRegistry | None = None,
        provider: Provider | None = None,
        journal: CallJournal | None = None,
        connect_stream: StreamConnector | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.registry = registry if registry is not None else CallRegistry()
        self.provider = provider
        self.journal: CallJournal = journal if journal is not None else MemoryJournal()
        self.echo_agent: EchoAgent | None = None
        self.connect_stream = connect_stream
        self.draining = False
        self.ready = trio.Event()
        self._admitting = 0  # WebSockets admitted but not registered as calls yet

    def connection_contained(self, exc: BaseException) -> None:
        """hypercorn failed on one connection and voxbridge contained it (see ``containment``)."""
        self.metrics.connections_rejected.labels(reason="bad_request").inc()

    # --- ASGI entry point ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            message = await receive()
            assert message["type"] == "lifespan.startup"
            try:
                await self.start(nursery)
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()  # lifespan.shutdown: calls are gone (hypercorn waits first)
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def start(self, nursery: trio.Nursery) -> None:
        """Start what the app needs (the echo agent for ``provider=echo``) and resolve the endpoint.

        Idempotent: ``voxbridge serve`` may have done it already.
        """
        if self.provider is None:
            echo_url = None
            if self.settings.provider == "echo" and self.settings.provider_url is None:
                self.echo_agent = EchoAgent()
                echo_url = await nursery.start(self.echo_agent.serve)
            self.provider = provider_for(self.settings, echo_url=echo_url)
            log.info("provider %s", self.provider.name)
        self.ready.set()

    # --- calls --------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != MEDIA_PATH:
            await self._reject(send, 404, "bad_request", b"no WebSocket route here\n")
            return
        if self.draining:
            await self._reject(send, 503, "draining", b"draining: not accepting calls\n")
            return
        if self._at_capacity() or self.provider is None:
            await self._reject(send, 503, "capacity", b"at capacity\n")
            return
        # The slot is taken now, before the awaits below: otherwise several upgrades arriving
        # together all pass the check before any of them is registered.
        self._admitting += 1
        try:
            message = await receive()
            if message["type"] != "websocket.connect":
                return
            await send({"type": "websocket.accept"})
            call = Call(
                AsgiCarrier(receive, send),
                self.provider,
                settings=self.settings,
                metrics=self.metrics,
                registry=self.registry,
                journal=self.journal,
                connect_stream=self.connect_stream,
            )
        finally:
            self._admitting -= 1
        await call.run()  # registers the call before its first checkpoint: the slot stays taken

    def _at_capacity(self) -> bool:
        return len(self.registry) + self._admitting >= self.settings.max_calls

    async def _reject(self, send: Send, status: int, reason: str, body: bytes) -> None:
        """Refuse a WebSocket before accepting it, with an HTTP status and a short body."""
        self.metrics.connections_rejected.labels(reason=reason).inc()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})

    async def drain(self, grace: float | None = None) -> None:
        """Stop admitting calls, let running ones finish for ``grace`` seconds, end the rest.

        Calls still running at the deadline end with ``server_shutdown`` (close 1001) through
        their normal teardown; this returns when every call is gone.
        """
        self.draining = True
        grace = self.settings.drain_timeout if grace is None else grace
        log.info("draining: %d calls, up to %gs", len(self.registry), grace)
        with trio.move_on_after(grace):
            await self.registry.wait_empty()
        ended = self.registry.end_all(Reason.SERVER_SHUTDOWN, "drain deadline reached")
        if ended:
            log.info("drain deadline: ended %d calls with server_shutdown", ended)
        with trio.move_on_after(self.settings.teardown_timeout + 1):
            await self.registry.wait_empty()

    # --- plain HTTP ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            await _respond(send, 200, b"ok\n")
        elif path == "/readyz":
            if self.draining:
                await _respond(send, 503, b"draining\n")
            elif self.provider is None:
                await _respond(send, 503, b"starting\n")
            elif self._at_capacity():
                await _respond(send, 503, b"at capacity\n")
            else:
                await _respond(send, 200, b"ready\n")
        elif path == "/metrics":
            await _respond(send, 200, self.metrics.render(), content_type=CONTENT_TYPE_LATEST)
        elif path == "/twilio/voice":
            if method != "POST":
                await _respond(send, 405, b"use POST\n", headers=[(b"allow", b"POST")])
                return
            if not await _drain_body(receive):
                await _respond(send, 413, b"request body too large or too slow\n")
                return
            await _respond(send, 200, self.twiml(scope).encode(), content_type="text/xml")
        else:
            await _respond(send, 404, b"not found\n")

    def twiml(self, scope: Scope) -> str:
        """The TwiML that connects a Twilio call to this server's media stream."""
        url = self.media_url(scope)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Connect><Stream url={quoteattr(url)} /></Connect></Response>"
        )

    def media_url(self, scope: Scope) -> str:
        """``wss://<public host>/twilio/media`` (``ws://`` when the public URL is plain http)."""
        base = self.settings.public_url
        if base is None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not host:
                server = scope.get("server") or (self.settings.host, self.settings.port)
                host = f"{server[0]}:{server[1]}"
            base = f"http://{host}"
        parts = urlsplit(base)
        scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{MEDIA_PATH}"


async def _drain_body(receive: Receive) -> bool:
    """Read and discard a request body (bounded in size and time)."""
    size = 0
    with trio.move_on_after(BODY_TIMEOUT):
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            size += len(message.get("body", b""))
            if size > MAX_BODY:
                return False
            if not message.get("more_body", False):
                return True
    return False


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
