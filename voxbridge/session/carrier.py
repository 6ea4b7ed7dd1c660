"""The carrier side of a call, as the call sees it: a small protocol any transport can implement.

voxbridge ships two: the ASGI one the server uses (``voxbridge.server.asgi_carrier``) and
:class:`TrioWebSocketCarrier` for apps that accept carrier WebSockets with trio-websocket (and for
tests, over ``trio.testing.memory_stream_pair``). An implementation maps its library's "the peer is
gone" signals to ``Disconnect(CALLER_CLOSED)`` (:class:`CarrierClosed`, with the close code the
peer sent) and nothing else; deadlines are the call's job.
"""

from __future__ import annotations

from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..errors import Disconnect, Reason

__all__ = ["CLEAN_CLOSE_CODES", "CarrierClosed", "CarrierSocket", "TrioWebSocketCarrier"]

#: Close codes of a peer that closed with a close frame, normally (RFC 6455 section 7.4.1: 1000
#: normal closure; 1005 a close frame without a code).
CLEAN_CLOSE_CODES = frozenset({1000, 1005})


class CarrierClosed(Disconnect):
    """``Disconnect(CALLER_CLOSED)``: the carrier's socket is gone, with the close ``code`` the
    peer sent (RFC 6455 section 7.4.1: 1000 or 1005 for a close frame, :attr:`clean`; 1006 for a
    connection that dropped without one). For a carrier without a stop event
    (``capabilities.sends_stop`` false) the call takes a clean close after the start as the
    caller hanging up (``caller_stop``).

    Args:
        code: the close code.
        detail: a short human sentence for the log.
    """

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(Reason.CALLER_CLOSED, detail)
        self.code = code

    @property
    def clean(self) -> bool:
        """Whether the peer closed with a normal close frame (1000, 1005)."""
        return self.code in CLEAN_CLOSE_CODES


def _code(exc: ConnectionClosed) -> int:
    return exc.reason.code if exc.reason is not None else 1006


class CarrierSocket(Protocol):
    """One accepted carrier WebSocket."""

    async def receive(self) -> str | bytes:
        """The next frame. Raises ``Disconnect(CALLER_CLOSED)`` once the peer is gone
        (:class:`CarrierClosed` when the close code is known). Cancelling it loses no frame: the
        call may cancel a receive and receive again (docs/timeouts.md, "How precise a deadline
        is")."""
        ...

    async def send(self, frame: str | bytes) -> None:
        """Send one frame: a ``str`` as a text frame, ``bytes`` as a binary frame (the audio of a
        carrier whose ``capabilities.binary_audio`` is true). Raises ``Disconnect(CALLER_CLOSED)``
        once the peer is gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``. Idempotent, never raises; the call bounds how long it may take."""
        ...


class TrioWebSocketCarrier:
    """:class:`CarrierSocket` over an accepted ``trio_websocket.WebSocketConnection``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self.ws.get_message()
        except ConnectionClosed as exc:
            code = _code(exc)
            raise CarrierClosed(code, f"carrier socket closed (code {code})") from None
        return message

    async def send(self, frame: str | bytes) -> None:
        try:
            await self.ws.send_message(frame)
        except ConnectionClosed as exc:
            code = _code(exc)
            raise CarrierClosed(code, f"carrier socket closed (code {code})") from None

    async def close(self, code: int, reason: str) -> None:
        # No drain needed here, unlike AsgiCarrier.close: trio-websocket (0.12) pauses its reader
        # while its message queue is full, but ``aclose`` sends the close frame and then closes that
        # queue's receive side (``_recv_channel.aclose()``) before waiting for the handshake. The
        # reader, parked in ``_send_channel.send``, wakes with BrokenResourceError, which
        # ``_handle_message_event`` swallows, so it goes on reading and discarding a caller that
        # keeps streaming until the caller's close reply arrives (test_e2e_carrier_release).
        try:
            await self.ws.aclose(code, reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
