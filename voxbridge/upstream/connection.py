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

The connection's reader task (trio-websocket's, the socket's only task) runs in a nursery the
*caller* supplies (the call's sockets nursery), so the call decides how long a socket may live: the
reader must outlive the call's own tasks for the close handshake to complete during teardown.
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


def _websocket(stream: trio.abc.Stream, endpoint: ProviderEndpoint) -> WebSocketConnection:
    """The client connection over ``stream`` (not started: its reader sends the handshake)."""
    return WEBSOCKET_CONNECTION(  # trio-websocket's, minus per-message yields (fastpaths.py)
        stream,  # any trio Stream works; memory ones in tests
        WSConnection(ConnectionType.CLIENT),
        host=endpoint.host,
        path=endpoint.resource,
        client_extra_headers=[(k.encode(), v.encode()) for k, v in endpoint.headers],
        message_queue_size=MESSAGE_QUEUE_SIZE,
        max_message_size=MAX_MESSAGE_SIZE,
    )


class Upstream:
    """An open provider session. Build it with :meth:`open`."""

    def __init__(
        self, ws: WebSocketConnection, stream: trio.abc.Stream, endpoint: ProviderEndpoint
    ) -> None:
        self.ws = ws
        self.endpoint = endpoint
        self._stream = stream
        #: The scope of the reader task (shielded until the call's bound), once it is started.
        self._reader: trio.CancelScope | None = None
        self._reader_done = trio.Event()
        self._opened = False
        #: Why the opening handshake failed, as the reader found it (refused, or broken).
        self._failure: UpstreamConnectFailed | None = None
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

        The reader is trio-websocket's own reader task, run in ``nursery`` as the socket's one
        task (no host task around it). It is shielded, with ``live_until`` (an absolute trio
        time: the latest instant the call itself can end) as the shield's deadline: cancelling
        the call's tasks must not stop the reader before :meth:`aclose` completes the close
        handshake, and nothing may outlive the call's bound. :meth:`aclose` and :meth:`abort`
        end it, and so does any way out of this method but success. Whatever the reader raises
        stays with this socket: nothing reaches ``nursery``.

        Raises:
            UpstreamConnectFailed: refused (``status`` set), unreachable, TLS or handshake failure,
                or the connection closed during the handshake.
        """
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
            upstream = cls(_websocket(stream, endpoint), stream, endpoint)
            upstream._reader = trio.CancelScope(shield=True, deadline=live_until)
            nursery.start_soon(upstream._read)
            await upstream._handshake()
            upstream._opened = True
            return upstream
        except (OSError, trio.BrokenResourceError, ConnectionClosed) as exc:
            raise UpstreamConnectFailed(f"{endpoint.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            # Any way out but success (failure, timeout, cancellation) leaves no socket open,
            # and no reader.
            if upstream is not None and not upstream._opened:
                await upstream.abort()
            elif upstream is None and stream is not None:
                await trio.aclose_forcefully(stream)

    async def _handshake(self) -> None:
        """Wait for the opening handshake: accepted, or the reader ended without it.

        trio-websocket's ``wrap_client_stream`` (0.12) waits only for the handshake to succeed.
        When the provider closes or resets the connection half-way through it, the reader ends
        the connection but never sets ``_open_handshake``, so the wait would last until the
        caller's deadline and a retry that could have succeeded at once waits out
        ``connect_timeout`` (docs/library-notes.md). This waits for whichever comes first.

        Raises:
            UpstreamConnectFailed: refused, or the connection closed during the handshake.
        """
        opened = self.ws._open_handshake
        if not opened.is_set():
            async with trio.open_nursery() as race:  # two short tasks, while connecting only

                async def first(event: trio.Event) -> None:
                    await event.wait()
                    race.cancel_scope.cancel()

                race.start_soon(first, opened)
                race.start_soon(first, self._reader_done)
        if not opened.is_set():
            raise self._failure or UpstreamConnectFailed(
                f"{self.endpoint.name}: the connection closed during the handshake"
            )

    async def _read(self) -> None:
        """trio-websocket's reader task, its failures kept to this socket (never raised).

        A refused or failed handshake is left in ``_failure`` for :meth:`open`. A reader that
        fails on its own once the session is open closes the socket. Known case: the provider
        pings while we close, trio-websocket answers with a pong that wsproto refuses in the
        closing state (trio-websocket issue #184). One socket is dead; the call is not.
        """
        assert self._reader is not None
        name = self.endpoint.name
        try:
            with self._reader:
                await self.ws._reader_task()
        except ConnectionRejected as refused:
            status = getattr(refused, "status_code", None)
            self._failure = UpstreamConnectFailed(
                f"{name}: handshake refused with HTTP {status}", status=status
            )
        except HandshakeError as failed:
            self._failure = UpstreamConnectFailed(f"{name}: handshake failed: {failed}")
        except Exception as failed:
            if not self.ws._open_handshake.is_set():  # open() raises it
                self._failure = UpstreamConnectFailed(f"{name}: connection failed: {failed!r}")
            else:
                log.info(
                    "%s: the socket's reader failed; the session is closed", name, exc_info=True
                )
                await self.abort()
        finally:
            self._reader_done.set()

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
        if self._reader is not None:
            # First, and without a checkpoint: in a cancelled caller the await below raises
            # Cancelled, and a reader left shielded would outlive the call.
            self._reader.cancel()
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
