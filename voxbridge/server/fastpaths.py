"""Per-message fast paths in hypercorn's trio ``TCPServer``.

docs/library-notes.md, "Per-message fast paths in hypercorn's trio TCPServer" and "Data before the
101: the app is never told".

hypercorn 0.18's trio worker pays, for every message a connection carries:

* **a write**: ``protocol_send`` takes ``send_lock`` (a checkpoint and a yield) and opens a
  shielded cancel scope (voxbridge's :class:`~voxbridge.server.containment.ContainedTCPServer`
  gives it a deadline: one more heap push) around ``SocketStream.send_all`` (a second yield);
* **a read**: ``_read_data`` opens ``trio.fail_after(read_timeout or inf)`` around
  ``receive_some``, whose first ``recv`` on a drained socket fails with ``EAGAIN`` before trio
  waits for readability and calls ``recv`` again;
* **the hand-off to the app**: ``await channel.send(...)`` (a yield) into the app's queue
  (:class:`~voxbridge.server.containment.ReleasingTaskGroup` carries that fast path).

:class:`FastTCPServer` keeps hypercorn's semantics and skips that plumbing when it buys nothing:

* **send**: on a plain TCP connection whose ``send_lock`` is free, one non-blocking ``write(2)``
  of the whole frame, without the lock, the scope or a yield. Only what the kernel does not take
  at once goes the slow way: the lock is taken (it is free: nothing was awaited since the check)
  and the rest is written under the shielded, bounded scope, so a peer with a zero receive window
  is still cut off after ``send_timeout`` and bytes of two frames never interleave. A send from a
  cancelled context still raises ``Cancelled`` and writes nothing.
* **read**: no ``fail_after`` unless ``read_timeout`` is configured; on a plain TCP connection
  the reader waits until the socket is readable (``trio.lowlevel.wait_readable``) and then reads
  it once (``read(2)``, up to hypercorn's ``MAX_RECV`` bytes), so no ``recv`` finds it empty.

**TLS** (hypercorn with ``certfile``: the stream is a ``trio.SSLStream``): the send fast path and
the readable-first read stand aside, because the TLS layer has its own buffers (plaintext can be
waiting in the ``SSLObject`` while the socket is not readable, and a record must be written whole
by the ``SSLStream``). Over TLS only the missing ``fail_after(inf)`` and the app-queue
``send_nowait`` hold.

Both fast paths use ``read(2)``/``write(2)`` on the socket's file descriptor, so they are
installed on POSIX only; on other systems, or over a hypercorn whose ``TCPServer`` methods
reference other names than the ones this module was written against, ``install()`` keeps
:class:`~voxbridge.server.containment.ContainedTCPServer` and logs a warning.

:class:`NotifyingWSStream` closes a gap in hypercorn that the fast paths made reachable every
time: a client that sends data before the 101 gets hypercorn's 400 and the app was never told.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import hypercorn.protocol.h11 as _hypercorn_h11
import hypercorn.trio.tcp_server as _hypercorn_tcp_server
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body, Data, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer as _TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection
from wsproto.frame_protocol import CloseReason

from .containment import ContainedTCPServer

REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING

__all__ = ["FastTCPServer", "NotifyingWSStream", "fits", "install_notifying_ws_stream"]

#: Bytes one read asks for: hypercorn's own ``MAX_RECV`` (64 KiB in 0.18).
MAX_RECV: int = getattr(_hypercorn_tcp_server, "MAX_RECV", 2**16)

#: The names hypercorn 0.18's ``TCPServer._read_data`` and ``protocol_send`` reference (their
#: ``co_names``). ``_read_data`` is re-implemented and ``protocol_send``'s write is bypassed, so a
#: hypercorn whose methods reference anything else (new handling we would drop) keeps its own.
_READ_DATA_NAMES = (
    "trio",
    "fail_after",
    "config",
    "read_timeout",
    "inf",
    "stream",
    "receive_some",
    "MAX_RECV",
    "protocol",
    "handle",
    "RawData",
    "bytes",
    "ClosedResourceError",
    "BrokenResourceError",
    "TooSlowError",
    "Closed",
)
_PROTOCOL_SEND_NAMES = (
    "isinstance",
    "RawData",
    "send_lock",
    "trio",
    "CancelScope",
    "shield",
    "stream",
    "send_all",
    "data",
    "BrokenResourceError",
    "ClosedResourceError",
    "protocol",
    "handle",
    "Closed",
    "_close",
    "Updated",
    "idle",
    "idle_task",
    "restart",
    "_task_group",
    "_idle_timeout",
    "stop",
)


#: What ``NotifyingWSStream`` relies on in hypercorn 0.18's ``WSStream.handle``: data before the
#: app's accept answered 400 and the stream marked closed (``_send_error_response``, ``closed``).
_WS_HANDLE_NAMES = (
    "closed",
    "isinstance",
    "Request",
    "time",
    "start_time",
    "Handshake",
    "headers",
    "http_version",
    "handshake",
    "raw_path",
    "partition",
    "scheme",
    "unquote",
    "decode",
    "config",
    "root_path",
    "client",
    "server",
    "state",
    "copy",
    "subprotocols",
    "scope",
    "valid_server_name",
    "_send_error_response",
    "is_valid",
    "task_group",
    "spawn_app",
    "app",
    "app_send",
    "app_put",
    "Body",
    "Data",
    "accepted",
    "connection",
    "receive_data",
    "data",
    "_handle_events",
    "StreamClosed",
    "ASGIWebsocketState",
    "HTTPCLOSED",
    "CLOSED",
    "CloseReason",
    "NORMAL_CLOSURE",
    "value",
    "ABNORMAL_CLOSURE",
)


def _names(function: object) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    return tuple(code.co_names) if code is not None else ()


def fits() -> str | None:
    """Why the fast paths cannot be installed over this hypercorn and trio (None: they can)."""
    if os.name != "posix":  # pragma: no cover - voxbridge runs on Linux
        return "read(2)/write(2) on a socket's descriptor need POSIX"
    if _names(_TCPServer._read_data) != _READ_DATA_NAMES:
        return "hypercorn's TCPServer._read_data changed"
    if _names(_TCPServer.protocol_send) != _PROTOCOL_SEND_NAMES:
        return "hypercorn's TCPServer.protocol_send changed"
    if not hasattr(Config, "read_timeout") or not hasattr(trio.lowlevel, "wait_readable"):
        return "hypercorn's Config.read_timeout or trio.lowlevel.wait_readable is missing"
    return None


class FastTCPServer(ContainedTCPServer):
    """:class:`ContainedTCPServer` with per-message fast paths on plain TCP (module docstring).

    Same events and errors as hypercorn's ``TCPServer`` (0.18): a write to a connection that is
    closed, shut down for writing, reset or gone (``EPIPE``, ``ECONNRESET``) hands the protocol
    ``Closed()`` and raises nothing; a write the peer does not take within ``send_timeout``
    seconds closes the stream (as :class:`ContainedTCPServer`); the read loop hands the protocol
    ``RawData`` (at most ``MAX_RECV`` bytes each, ``b""`` at end of stream) and then ``Closed()``,
    also after ``read_timeout`` seconds without data when that is configured.
    """

    @functools.cached_property
    def _socket(self) -> trio.socket.SocketType | None:
        """The connection's socket on plain TCP; None over TLS (the fast paths stand aside)."""
        stream: object = self.stream  # hypercorn types it as an SSLStream; plain TCP is not one
        return stream.socket if isinstance(stream, trio.SocketStream) else None

    async def protocol_send(self, event: Event) -> None:
        sock = self._socket
        if sock is None or type(event) is not RawData:
            await super().protocol_send(event)
            return
        await trio.lowlevel.checkpoint_if_cancelled()  # as acquiring the lock would: no yield
        if self.send_lock.locked():  # a write is under way: queue behind it, as hypercorn does
            await super().protocol_send(event)
            return
        data = event.data
        fd = sock.fileno()
        if fd == -1 or sock.did_shutdown_SHUT_WR:  # closed, or hypercorn sent EOF
            await self.protocol.handle(Closed())
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:  # the peer's window and our send buffer are full
            sent = 0
        except OSError:  # EPIPE, ECONNRESET: what send_all reports as BrokenResourceError
            await self.protocol.handle(Closed())
            return
        if sent == len(data):
            return
        # The kernel took part of the frame: the rest goes the slow way, with the lock (free:
        # nothing was awaited since locked()), shielded and bounded by send_timeout.
        self.send_lock.acquire_nowait()
        try:
            await self._send_locked(memoryview(data)[sent:])
        finally:
            self.send_lock.release()

    async def _read_until_closed(self) -> None:
        timeout = self.config.read_timeout
        receive = self._receive_readable if self._socket is not None else self._receive_stream
        while True:
            try:
                if timeout:
                    with trio.fail_after(timeout):
                        data = await receive()
                else:  # hypercorn's default (None): no scope at all, not fail_after(inf)
                    data = await receive()
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(data))
            if not data:
                break
        await self.protocol.handle(Closed())

    async def _receive_readable(self) -> bytes:
        """Wait until the socket is readable, then read it once (``b""``: end of stream).

        Raises:
            trio.ClosedResourceError: the socket was closed (by hypercorn, from another task).
            trio.BrokenResourceError: the read failed (``ECONNRESET``...).
        """
        sock = self._socket
        assert sock is not None
        while True:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed")
            await trio.lowlevel.wait_readable(sock)  # the checkpoint; a close wakes it (Closed)
            fd = sock.fileno()
            if fd == -1:
                raise trio.ClosedResourceError("socket was already closed")
            try:
                return os.read(fd, MAX_RECV)
            except BlockingIOError:  # readiness reported but nothing there: wait again
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc

    async def _receive_stream(self) -> bytes:
        """hypercorn's read, over TLS (the ``SSLStream`` may hold plaintext already)."""
        return bytes(await self.stream.receive_some(MAX_RECV))


class NotifyingWSStream(WSStream):
    """hypercorn's WebSocket stream, which tells the app when hypercorn refused the client itself.

    A client that sends data before the app accepted (it did not wait for the 101, against RFC
    6455 section 4.1) gets hypercorn's own 400, and the stream marks itself closed: from then on it
    drops every event, the client's close included. The app, started already with
    ``websocket.connect`` queued, was never sent ``websocket.disconnect``: it waited for the
    client's first message until its own timeout (voxbridge's ``start_timeout``), holding the
    connection. This stream queues that disconnect (code 1006, as hypercorn's own for a connection
    that was not closed cleanly) right after the 400.

    hypercorn's reader used to yield between queueing ``websocket.connect`` and reading on, and
    writes yielded twice, so the app's accept and hypercorn's 400 usually interleaved and the
    connection failed in ``h11`` instead (contained, see ``ContainedTCPServer``). With the
    per-message fast paths the reader answers such a client before the app runs, every time.
    """

    #: The code of the close frame the peer sent (1005: one without a code); ``None``: none yet.
    peer_close_code: int | None = None

    async def handle(self, event: StreamEvent) -> None:
        app_put = self.app_put
        if (
            isinstance(event, StreamClosed)
            and self.peer_close_code is not None
            and app_put is not None
            and not self.closed
            and self.state is ASGIWebsocketState.CONNECTED
        ):  # the peer closed with a close frame: say so, not 1006 (as for a dropped connection)
            self.closed = True
            await app_put({"type": "websocket.disconnect", "code": self.peer_close_code})
            return
        early = not self.closed and isinstance(event, Body | Data) and app_put is not None
        if not early or self.handshake.accepted:
            await super().handle(event)
            return
        await super().handle(event)
        if self.closed and app_put is not None:  # hypercorn answered 400: nothing else will come
            await app_put(
                {"type": "websocket.disconnect", "code": CloseReason.ABNORMAL_CLOSURE.value}
            )

    async def _send_wsproto_event(self, event: Any) -> None:
        """hypercorn closes a connection whose message exceeds ``websocket_max_message_size``
        with 1009 and tells the app only 1006 once the peer is gone: tell it 1009 at once, so
        the call ends ``protocol_error`` (``AsgiCarrier``), not ``caller_closed``.

        Also remembers the code of the peer's close frame (our reply echoes it) for
        :meth:`handle`: hypercorn tells the app 1006 for a clean close and a dropped connection
        alike, and for a carrier without a stop event the clean close is its hang-up."""
        if isinstance(event, CloseConnection) and self.connection.state is REMOTE_CLOSING:
            self.peer_close_code = int(event.code)  # the reply to the peer's close frame
        await super()._send_wsproto_event(event)
        too_big = CloseReason.MESSAGE_TOO_BIG
        if isinstance(event, CloseConnection) and event.code == too_big and self.app_put:
            await self.app_put({"type": "websocket.disconnect", "code": too_big.value})


def install_notifying_ws_stream() -> str | None:
    """Bind :class:`NotifyingWSStream` where hypercorn's HTTP/1.1 protocol makes its WebSocket
    streams. Idempotent. Returns why it could not (None: installed)."""
    current = getattr(_hypercorn_h11, "WSStream", None)
    if current is NotifyingWSStream:
        return None
    if current is not WSStream or _names(WSStream.handle) != _WS_HANDLE_NAMES:
        return "hypercorn's protocol.h11.WSStream changed"
    _hypercorn_h11.WSStream = NotifyingWSStream  # type: ignore[attr-defined]
    return None
