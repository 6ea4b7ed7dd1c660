"""One WebSocket session with a provider, every operation bounded and mapped to ``Disconnect``.

This is the only module that sees trio-websocket's exceptions. What it guarantees the call:

* ``connect`` finishes within ``connect_timeout`` or raises ``Disconnect(UPSTREAM_CONNECT_FAILED)``;
  the TCP socket gets keepalive and ``TCP_USER_TIMEOUT`` first (LIBRARY_FACTS 13, 15), so a provider
  that vanishes mid-call is noticed by the kernel too.
* ``send`` raises ``Disconnect(UPSTREAM_STALLED)`` when the caller's deadline fires (sends are
  cancellable, LIBRARY_FACTS 10) and ``Disconnect(UPSTREAM_CLOSED)`` when the socket is gone.
* ``receive`` raises ``Disconnect(UPSTREAM_CLOSED)`` when the provider closes. It has no deadline of
  its own: a provider may be silent while the caller talks. Liveness is the keepalive's job (``ping``
  under ``pong_timeout``, LIBRARY_FACTS 9), which ends the call for a frozen provider.
* ``aclose`` never takes longer than ``close_timeout``; when the close handshake cannot finish the
  stream is closed anyway (trio-websocket closes it when cancelled) -- no socket outlives its call.

The connection's reader task runs in a nursery the *caller* supplies, so the call decides how long
the socket may live (see ``voxbridge.session.call``: the reader must outlive the call's own tasks for a
clean close handshake).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ..errors import Disconnect, Reason
from ..providers.endpoint import ProviderEndpoint

__all__ = ["StreamConnector", "Upstream", "open_tcp_stream_tuned", "tune_socket"]

#: Opens the byte stream to ``(host, port)``. Tests inject memory streams here.
StreamConnector = Callable[[str, int], Awaitable[trio.abc.Stream]]

# Provider frames are audio chunks of a few KiB; a realtime provider may send a burst ahead of real
# time. 1 MiB bounds one message; the queue bounds memory per call (LIBRARY_FACTS 12: the reader only
# pauses when the queue is full, and the call always has a task reading it).
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


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a group, for a log line."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


class Upstream:
    """An open provider session. Build it with :meth:`connect`."""

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
        connect_timeout: float,
        connect_stream: StreamConnector,
    ) -> Upstream:
        """:meth:`connect`, with the socket's reader hosted in a task of ``nursery``.

        After the handshake the host task shields itself: cancelling the call's own tasks (or the
        application cancelling the call) must not stop the reader, or :meth:`aclose` could not
        complete the close handshake. :meth:`aclose` ends the host task once the socket is closed.

        Raises:
            Disconnect: ``UPSTREAM_CONNECT_FAILED``, as :meth:`connect`.
        """
        upstream: Upstream = await nursery.start(
            cls._host_task, endpoint, connect_timeout, connect_stream
        )
        return upstream

    @classmethod
    async def _host_task(
        cls,
        endpoint: ProviderEndpoint,
        connect_timeout: float,
        connect_stream: StreamConnector,
        *,
        task_status: trio.TaskStatus[Upstream],
    ) -> None:
        failure: Disconnect | None = None
        with trio.CancelScope() as scope:
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        upstream = await cls.connect(
                            nursery,
                            endpoint,
                            connect_timeout=connect_timeout,
                            connect_stream=connect_stream,
                        )
                    except Disconnect as exc:  # re-raised below, outside the nursery
                        failure = exc
                        nursery.cancel_scope.cancel()
                    else:
                        scope.shield = True
                        upstream._host = scope
                        task_status.started(upstream)
                        await trio.sleep_forever()
            except* HandshakeError as group:  # a rejected handshake surfaces from the reader task
                leaf = _leaf(group)
                status = getattr(leaf, "status_code", None)
                failure = Disconnect(
                    Reason.UPSTREAM_CONNECT_FAILED,
                    f"{endpoint.name}: handshake failed: {leaf}",
                    final=status in (401, 403),  # a bad key stays bad: do not retry
                )
        if failure is not None:
            raise failure

    @classmethod
    async def connect(
        cls,
        nursery: trio.Nursery,
        endpoint: ProviderEndpoint,
        *,
        connect_timeout: float,
        connect_stream: StreamConnector,
    ) -> Upstream:
        """Open TCP (and TLS for ``wss``), then the WebSocket handshake, within ``connect_timeout``.

        Raises:
            Disconnect: ``UPSTREAM_CONNECT_FAILED`` on timeout, refusal, TLS or handshake failure.
        """
        stream: trio.abc.Stream | None = None
        upstream: Upstream | None = None
        with trio.move_on_after(connect_timeout):
            try:
                stream = await connect_stream(endpoint.host, endpoint.port)
                if endpoint.secure:
                    stream = trio.SSLStream(
                        stream, ssl.create_default_context(), server_hostname=endpoint.host
                    )
                    await stream.do_handshake()
                ws = await wrap_client_stream(
                    nursery,
                    stream,  # type: ignore[arg-type]  # any trio Stream works; memory ones in tests
                    endpoint.host,
                    endpoint.resource,
                    extra_headers=[(k.encode(), v.encode()) for k, v in endpoint.headers],
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    max_message_size=MAX_MESSAGE_SIZE,
                )
                upstream = cls(ws, stream, endpoint)
                return upstream
            except (OSError, HandshakeError, trio.BrokenResourceError, ConnectionClosed) as exc:
                raise Disconnect(
                    Reason.UPSTREAM_CONNECT_FAILED, f"{endpoint.name}: {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                # Any way out but success (failure, timeout, cancellation) leaves no socket open.
                if stream is not None and upstream is None:
                    await trio.aclose_forcefully(stream)
        raise Disconnect(
            Reason.UPSTREAM_CONNECT_FAILED,
            f"{endpoint.name}: no session within connect_timeout={connect_timeout:g}s",
        )

    async def send(self, frame: str | bytes) -> None:
        """Send one frame. The caller puts the deadline around it.

        Raises:
            Disconnect: ``UPSTREAM_CLOSED`` if the socket is closed.
        """
        try:
            await self.ws.send_message(frame)
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def receive(self) -> str | bytes:
        """The next frame from the provider.

        Raises:
            Disconnect: ``UPSTREAM_CLOSED`` when the provider closed the session.
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

    async def ping(self, pong_timeout: float) -> float:
        """Ping and wait for the pong. Returns the round-trip time in seconds.

        Raises:
            Disconnect: ``UPSTREAM_KEEPALIVE_TIMEOUT`` if no pong within ``pong_timeout``,
                ``UPSTREAM_CLOSED`` if the socket is closed.
        """
        started = trio.current_time()
        with trio.move_on_after(pong_timeout) as scope:
            try:
                await self.ws.ping()
            except ConnectionClosed as exc:
                raise self._closed(exc) from None
        if scope.cancelled_caught:
            raise Disconnect(
                Reason.UPSTREAM_KEEPALIVE_TIMEOUT, f"no pong within pong_timeout={pong_timeout:g}s"
            )
        return trio.current_time() - started

    async def aclose(self, code: int, reason: str, *, close_timeout: float) -> None:
        """Close handshake bounded by ``close_timeout``; the stream is closed either way."""
        try:
            with trio.move_on_after(close_timeout):
                await self.ws.aclose(code, reason)
        finally:
            # trio-websocket's aclose returns at once, stream still open, when the provider already
            # closed the session; so the stream is closed here, whatever happened above.
            await trio.aclose_forcefully(self._stream)
            if self._host is not None:
                self._host.cancel()  # the reader has nothing left to read

    def _closed(self, exc: ConnectionClosed) -> Disconnect:
        code = exc.reason.code if exc.reason else 1006
        if self.close_code is None:
            self.close_code = code
        said = exc.reason.reason if exc.reason else None
        return Disconnect(
            Reason.UPSTREAM_CLOSED,
            f"{self.endpoint.name} closed the session (code {code}"
            + (f", {said!r})" if said else ")"),
        )
