"""One WebSocket session with a provider: the I/O edge, mapping library errors to edge errors.

This is the only module that sees trio-websocket's exceptions. It raises the edge errors of
:mod:`voxbridge.errors` and decides nothing about the call:

* :meth:`Upstream.open` opens TCP (keepalive and ``TCP_USER_TIMEOUT`` first, so the kernel notices a
  vanished provider too; docs/library-notes.md, "TCP_USER_TIMEOUT"), TLS for ``wss``, then the
  WebSocket handshake, or raises :class:`~voxbridge.errors.UpstreamConnectFailed` (with the HTTP
  status of a refused handshake);
* :meth:`~Upstream.send`, :meth:`~Upstream.receive` and :meth:`~Upstream.ping` raise
  :class:`~voxbridge.errors.UpstreamClosed` (with the provider's close code) once the socket is gone;
* :meth:`~Upstream.aclose` closes with a handshake, :meth:`~Upstream.abort` without one (a peer known
  dead cannot answer); the byte stream is closed on every path, cancellation included.

None of these take a timeout: the caller (the provider link) puts each wait under
``voxbridge.deadlines.deadline`` -- sends are cancellable, pings wait for ever for a pong that never
comes, and exiting a connection against a dead peer is unbounded otherwise (docs/library-notes.md,
"trio-websocket").

The connection is trio-websocket's with its per-message yields removed (the reader's hand-off
and the send lock; over TLS, ``SSLStream``'s inner locks): :mod:`voxbridge.upstream.fastpaths`.

The connection's reader task runs in a nursery the *caller* supplies (the call's sockets nursery),
so the call decides how long a socket may live: the reader must outlive the call's own tasks for the
close handshake to complete during teardown.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
)
from wsproto import ConnectionType, WSConnection

from ..errors import UpstreamClosed, UpstreamConnectFailed
from ..providers.endpoint import ProviderEndpoint
from .fastpaths import WEBSOCKET_CONNECTION, direct_tls_locks

__all__ = ["StreamConnector", "Upstream", "open_tcp_stream_tuned", "tune_socket"]

log = logging.getLogger("voxbridge.upstream")

#: Opens the byte stream to ``(host, port)``. Tests inject memory streams here.
StreamConnector = Callable[[str, int], Awaitable[trio.abc.Stream]]

# Provider frames are audio chunks of a few KiB; a realtime provider may send a burst ahead of real
# time. 1 MiB bounds one message; the queue bounds memory per call (trio-websocket's reader pauses
# when the queue is full -- and then answers no pings -- so the call always has a task reading it).
MAX_MESSAGE_SIZE = 1024 * 1024
MESSAGE_QUEUE_SIZE = 64


def tune_socket(sock: socket.socket | trio.socket.SocketType, user_timeout: float) -> None:
    """Keepalive plus ``TCP_USER_TIMEOUT`` so a dead peer is noticed in seconds, not hours.

    Best effort: options the platform lacks are skipped.
    """
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", max(1, int(user_timeout / 2))),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(user_timeout * 1000)),
        ("TCP_NODELAY", 1),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:  # pragma: no cover - platform without the option
            pass


def open_tcp_stream_tuned(user_timeout: float) -> StreamConnector:
    """A connector that opens TCP and tunes the socket (keepalive, ``TCP_USER_TIMEOUT``)."""

    async def connect(host: str, port: int) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(host, port)
        tune_socket(stream.socket, user_timeout)
        return stream

    return connect


async def _open_websocket(
    nursery: trio.Nursery, stream: trio.abc.Stream, endpoint: ProviderEndpoint
) -> WebSocketConnection:
    """trio-websocket's ``wrap_client_stream``, except that a connection closed during the opening
    handshake fails it at once.

    ``wrap_client_stream`` (0.12) waits only for the handshake to succeed. When the provider closes
    or resets the connection half-way through it, the reader task ends the connection
    (``_abort_web_socket`` sets ``_close_handshake``) but never sets ``_open_handshake``, so the
    wait would last until the caller's deadline and a retry that could have succeeded at once
    waits out ``connect_timeout`` (docs/library-notes.md). This waits for whichever comes first.

    Raises:
        UpstreamConnectFailed: the connection closed before the handshake completed.
    """
    ws = WEBSOCKET_CONNECTION(  # trio-websocket's, minus per-message yields (fastpaths.py)
        stream,  # any trio Stream works; memory ones in tests
        WSConnection(ConnectionType.CLIENT),
        host=endpoint.host,
        path=endpoint.resource,
        client_extra_headers=[(k.encode(), v.encode()) for k, v in endpoint.headers],
        message_queue_size=MESSAGE_QUEUE_SIZE,
        max_message_size=MAX_MESSAGE_SIZE,
    )
    nursery.start_soon(ws._reader_task)
    async with trio.open_nursery() as race:

        async def first(event: trio.Event) -> None:
            await event.wait()
            race.cancel_scope.cancel()

        race.start_soon(first, ws._open_handshake)
        race.start_soon(first, ws._close_handshake)
    if not ws._open_handshake.is_set():
        raise UpstreamConnectFailed(f"{endpoint.name}: the connection closed during the handshake")
    return ws


class Upstream:
    """An open provider session. Build it with :meth:`open`."""

    def __init__(
        self, ws: WebSocketConnection, stream: trio.abc.Stream, endpoint: ProviderEndpoint
    ) -> None:
        self.ws = ws
        self.endpoint = endpoint
        self._stream = stream
        self._host: trio.CancelScope | None = None
        #: The close code the provider sent, once the session is closed (1006: no close frame).
        self.close_code: int | None = None
        self.opened_at = trio.current_time()

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        endpoint: ProviderEndpoint,
        *,
        connect_stream: StreamConnector,
        live_until: float,
    ) -> Upstream:
        """Open a session whose reader task runs in ``nursery``. The caller bounds the time.

        The reader's host task shields itself, with ``live_until`` (an absolute trio time: the
        latest instant the call itself can end) as the shield's deadline: cancelling the call's
        tasks must not stop the reader before :meth:`aclose` completes the close handshake, and
        nothing may outlive the call's bound. :meth:`aclose` and :meth:`abort` end the host task.

        Raises:
            UpstreamConnectFailed: refused (``status`` set), unreachable, TLS or handshake failure.
        """
        upstream: Upstream = await nursery.start(
            cls._host_task, endpoint, connect_stream, live_until
        )
        return upstream

    @classmethod
    async def _host_task(
        cls,
        endpoint: ProviderEndpoint,
        connect_stream: StreamConnector,
        live_until: float,
        *,
        task_status: trio.TaskStatus[Upstream],
    ) -> None:
        failure: UpstreamConnectFailed | None = None
        upstream: Upstream | None = None
        with trio.CancelScope() as scope:
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        upstream = await cls._connect(nursery, endpoint, connect_stream)
                    except UpstreamConnectFailed as exc:  # re-raised below, outside the nursery
                        failure = exc
                        nursery.cancel_scope.cancel()
                    else:
                        scope.shield = True
                        scope.deadline = live_until
                        upstream._host = scope
                        task_status.started(upstream)
                        await trio.sleep_forever()
            except* ConnectionRejected as rejected:
                # The handshake's refusal is raised by trio-websocket's reader task, the only
                # child of the nursery above: ``except*`` hands over the flat group it raised.
                status = getattr(rejected.exceptions[0], "status_code", None)
                failure = UpstreamConnectFailed(
                    f"{endpoint.name}: handshake refused with HTTP {status}", status=status
                )
            except* HandshakeError as failed:
                failure = UpstreamConnectFailed(
                    f"{endpoint.name}: handshake failed: {failed.exceptions[0]}"
                )
            except* Exception as failed:
                # The reader failed on its own. Known case: the provider pings while we close,
                # trio-websocket answers with a pong that wsproto refuses in the closing state
                # (trio-websocket issue #184). One socket is dead; the call is not.
                if upstream is None:
                    failure = UpstreamConnectFailed(
                        f"{endpoint.name}: connection failed: {failed.exceptions[0]!r}"
                    )
                else:
                    log.info(
                        "%s: the socket's reader failed; the session is closed",
                        endpoint.name,
                        exc_info=failed,
                    )
                    await upstream.abort()
        if failure is not None:
            raise failure

    @classmethod
    async def _connect(
        cls, nursery: trio.Nursery, endpoint: ProviderEndpoint, connect_stream: StreamConnector
    ) -> Upstream:
        stream: trio.abc.Stream | None = None
        upstream: Upstream | None = None
        try:
            stream = await connect_stream(endpoint.host, endpoint.port)
            if endpoint.secure:
                stream = trio.SSLStream(
                    stream, ssl.create_default_context(), server_hostname=endpoint.host
                )
                direct_tls_locks(stream)  # the same per-message gains over TLS (fastpaths.py)
                await stream.do_handshake()
            ws = await _open_websocket(nursery, stream, endpoint)
            upstream = cls(ws, stream, endpoint)
            return upstream
        except (OSError, trio.BrokenResourceError, ConnectionClosed) as exc:
            raise UpstreamConnectFailed(f"{endpoint.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            # Any way out but success (failure, timeout, cancellation) leaves no socket open.
            if stream is not None and upstream is None:
                await trio.aclose_forcefully(stream)

    @property
    def closed(self) -> bool:
        """True once the session is known to be closed (by either side)."""
        return self.close_code is not None

    async def send(self, frame: str | bytes) -> None:
        """Send one frame. The caller bounds the time (sends are cancellable).

        Raises:
            UpstreamClosed: the socket is closed.
        """
        try:
            await self.ws.send_message(frame)
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def receive(self) -> str | bytes:
        """The next frame from the provider.

        Raises:
            UpstreamClosed: the provider closed the session (or it was closed here).
        """
        try:
            message: str | bytes = await self.ws.get_message()
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        return message

    def receive_nowait(self) -> str | bytes | None:
        """The next frame if one is already queued, else ``None`` (a close is left to
        :meth:`receive` to report). Lets the call coalesce a burst without waiting for more."""
        try:
            # trio-websocket has no public non-blocking receive; its queue is a trio channel.
            message: str | bytes = self.ws._recv_channel.receive_nowait()
        except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
            return None
        return message

    async def ping(self) -> float:
        """Ping and wait for the pong; returns the round-trip time in seconds.

        trio-websocket waits for ever for a pong that never comes: the caller bounds the wait.

        Raises:
            UpstreamClosed: the socket is closed.
        """
        started = trio.current_time()
        try:
            await self.ws.ping()
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        return trio.current_time() - started

    async def aclose(self, code: int, reason: str) -> None:
        """Close handshake (the caller bounds it); the stream is closed on every path."""
        try:
            await self.ws.aclose(code, reason)
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Close the stream at once, no handshake: for a peer known dead, or after ``aclose``.

        trio-websocket's ``aclose`` returns at once, stream still open, when the provider already
        closed the session; so the stream is closed here, whatever happened before.
        """
        if self.close_code is None:
            self.close_code = 1006
        if self._host is not None:
            # First, and without a checkpoint: in a cancelled caller the await below raises
            # Cancelled, and a reader left shielded would outlive the call.
            self._host.cancel()
        await trio.aclose_forcefully(self._stream)  # closed even if that raises Cancelled

    def _closed(self, exc: ConnectionClosed) -> UpstreamClosed:
        code = exc.reason.code if exc.reason else 1006
        if self.close_code is None:
            self.close_code = code
        said = exc.reason.reason if exc.reason else None
        return UpstreamClosed(
            code,
            f"{self.endpoint.name} closed the session (code {code}"
            + (f", {said!r})" if said else ")"),
        )
