"""Per-message fast paths for the provider socket: trio-websocket's hand-off and send, and the
locks inside trio's ``SSLStream`` (issue 15; docs/library-notes.md, "Per-message fast paths").

trio-websocket 0.12.2 pays scheduler round trips per message that buy nothing:

* **The reader's hand-off.** Its reader task gives each received message to ``get_message``
  through a memory channel with ``await send_channel.send(msg)``, and trio's ``send`` ends in a
  checkpoint even when the channel had room: the reader yields once per message. A burst of *n*
  messages read in one ``receive_some`` takes *n* more passes of the scheduler -- each one running
  every other ready task of the process -- before the reader reads the socket again.
  :meth:`FastWebSocketConnection._handle_message_event` uses ``send_nowait`` when the channel has
  room and falls back to the awaiting ``send`` when it is full, so the back-pressure is the
  library's: a full queue still pauses the reader (which then answers no pings; library-notes,
  "A paused reader answers no pings").
* **The send lock.** ``_send`` takes a ``StrictFIFOLock`` with ``async with``, and a lock's
  ``acquire`` is a checkpoint even when the lock is free; then ``send_all`` checkpoints again.
  :meth:`FastWebSocketConnection._send` takes a free lock with ``acquire_nowait`` and waits in
  ``acquire`` only when another task holds it (or waits for it: FIFO order is kept). The write
  itself is unchanged, so a send stays cancellable: ``send_all`` is still a checkpoint, and a send
  to a peer with a zero window waits in it, where a deadline ends it.

Over TLS the stream is a ``trio.SSLStream``, whose every transport read and write is taken under
an inner lock with ``async with``: one more yield per send and per socket read.
:func:`direct_tls_locks` wraps those two locks of an ``SSLStream`` voxbridge made in a
:class:`DirectLock` (the same "take it at once when free" rule), so the provider leg saves the
same round trips on ``wss://`` as on ``ws://``.

Nothing here is global: voxbridge builds its provider connections from
:data:`WEBSOCKET_CONNECTION` (:func:`websocket_class` picks it once, after checking that
trio-websocket has the layout these overrides were written for, else it is the library's own
class and a warning says the fast paths are off) and wraps only the ``SSLStream`` objects it
creates itself.
"""

from __future__ import annotations

import inspect
import logging
from types import TracebackType
from typing import Any, cast

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from trio_websocket import _impl as _trio_websocket_impl
from wsproto.events import BytesMessage, Event, TextMessage

__all__ = [
    "WEBSOCKET_CONNECTION",
    "DirectLock",
    "FastWebSocketConnection",
    "direct_tls_locks",
    "websocket_class",
]

log = logging.getLogger("voxbridge.upstream")
_library_log = _trio_websocket_impl.logger

#: What the overrides rely on (trio-websocket 0.12): the two methods' parameters, and the
#: attributes ``WebSocketConnection.__init__`` sets that they use.
_METHOD_PARAMS = {"_send": ("self", "event"), "_handle_message_event": ("self", "event")}
_ATTRIBUTES = (
    "_wsproto",
    "_stream",
    "_stream_lock",
    "_send_channel",
    "_message_parts",
    "_message_size",
    "_max_message_size",
    "_close_reason",
)


class FastWebSocketConnection(WebSocketConnection):
    """trio-websocket's connection without the per-message yields of its reader and its sends.

    Only two internal methods are overridden, each keeping the library's behaviour (errors,
    close handling, back-pressure, FIFO order of senders) and dropping a checkpoint that was
    followed by another anyway or by nothing the scheduler needed.
    """

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        """Assemble a finished message and hand it to ``get_message`` without yielding.

        Fragments and oversized messages go to the library's own handler (they are rare and
        it closes with 1009). A finished message goes into the channel with ``send_nowait``;
        if the channel is full, the reader waits in ``send`` exactly as the library's does.
        """
        if not event.message_finished or (
            self._message_size + len(event.data) > self._max_message_size
        ):
            await super()._handle_message_event(event)
            return
        parts = self._message_parts
        parts.append(event.data)  # type: ignore[arg-type]  # bytes | bytearray | str, as the library
        message: str | bytes = (
            b"".join(cast("list[bytes]", parts))
            if isinstance(event, BytesMessage)
            else "".join(cast("list[str]", parts))
        )
        self._message_size = 0
        self._message_parts = []
        channel = self._send_channel
        try:
            channel.send_nowait(message)
        except trio.WouldBlock:
            try:
                await channel.send(message)  # full: the reader pauses, as the library's does
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # closed locally (``aclose``): the library discards the message too

    async def _send(self, event: Event) -> None:
        """Serialize ``event`` and write it, taking the send lock without a checkpoint when free.

        Raises:
            ConnectionClosed: the stream broke or was closed (the library's own mapping).
        """
        data = self._wsproto.send(event)
        lock = self._stream_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()  # another task is writing (or waits to): FIFO, as before
        try:
            _library_log.debug("%s sending %d bytes", self, len(data))
            try:
                await self._stream.send_all(data)  # the checkpoint: cancellable as before
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                assert self._close_reason is not None
                raise ConnectionClosed(self._close_reason) from None
        finally:
            lock.release()


class DirectLock:
    """A trio lock used with ``async with`` that is taken at once when free.

    ``trio.Lock.acquire`` is a checkpoint even when the lock is free. Where the code under the
    lock starts with a checkpoint of its own (a transport read or write), that first one only
    costs a scheduler round trip. This takes a free lock with ``acquire_nowait`` and waits in
    ``acquire`` otherwise (FIFO order kept: ``acquire_nowait`` refuses while others wait).
    """

    __slots__ = ("lock",)

    def __init__(self, lock: trio.Lock | trio.StrictFIFOLock) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        try:
            self.lock.acquire_nowait()
        except trio.WouldBlock:
            await self.lock.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()


def direct_tls_locks(stream: trio.SSLStream[Any]) -> bool:
    """Wrap the inner send and receive locks of ``stream`` (made here, unused yet) in
    :class:`DirectLock`. Idempotent.

    Under both locks ``SSLStream._retry`` calls the transport's ``send_all`` or
    ``receive_some``, each a checkpoint, so the lock's own checkpoint is redundant.

    Returns:
        True if both locks are direct; False (and a warning) if trio's ``SSLStream`` no longer
        has the two locks this was written for (trio 0.35), which are then left alone.
    """
    send_lock = getattr(stream, "_inner_send_lock", None)
    recv_lock = getattr(stream, "_inner_recv_lock", None)
    if isinstance(send_lock, DirectLock) and isinstance(recv_lock, DirectLock):
        return True
    if not isinstance(send_lock, trio.StrictFIFOLock) or not isinstance(recv_lock, trio.Lock):
        log.warning(
            "trio.SSLStream has no inner send/receive locks as expected: the TLS fast path is off"
        )
        return False
    stream._inner_send_lock = DirectLock(send_lock)  # type: ignore[assignment]
    stream._inner_recv_lock = DirectLock(recv_lock)  # type: ignore[assignment]
    return True


def _params(function: object) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(function).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # pragma: no cover - not a function any more
        return ()


def websocket_class() -> type[WebSocketConnection]:
    """:class:`FastWebSocketConnection` if trio-websocket has the layout it was written for,
    else ``WebSocketConnection`` itself (with a warning: the fast paths are off)."""
    code = getattr(WebSocketConnection.__init__, "__code__", None)
    init_names = set(code.co_names) if code is not None else set()
    if (
        all(
            _params(getattr(WebSocketConnection, name, None)) == params
            for name, params in _METHOD_PARAMS.items()
        )
        and all(name in init_names for name in _ATTRIBUTES)
        and callable(getattr(WebSocketConnection, "_abort_web_socket", None))
    ):
        return FastWebSocketConnection
    log.warning(
        "trio-websocket is not laid out as expected: its per-message fast paths are NOT installed"
    )
    return WebSocketConnection


#: The class voxbridge builds provider connections from (checked once, at import).
WEBSOCKET_CONNECTION: type[WebSocketConnection] = websocket_class()
