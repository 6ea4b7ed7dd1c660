"""The carrier socket of a call served over ASGI (hypercorn's trio worker).

hypercorn reports close code 1006 for every peer close and silently ignores sends after the peer
left (docs/library-notes.md, "The app always sees 1006"), so this transport learns that the carrier
is gone only from the ``websocket.disconnect`` message; the call's deadlines and the carrier's stop
(Twilio's and Telnyx's ``stop``; Plivo and Vonage send none) cover the rest. Two closes are
told apart: a frame over the size limit (hypercorn closes 1009, and ``NotifyingWSStream`` reports
that code) ends the call ``protocol_error``, not ``caller_closed``; and a peer's close frame
(``NotifyingWSStream`` reports its code, 1000 or 1005, where hypercorn says 1006) raises
:class:`~voxbridge.session.carrier.CarrierClosed` with that code, which for a carrier without a
stop event is its hang-up (``caller_stop``). Frames go out as text
(``str``) or binary (``bytes``: Vonage's audio), one ``websocket.send`` message each.

Closing drains. hypercorn feeds the app through a queue of ten messages and its connection reader
waits while that queue is full, so an app that sends ``websocket.close`` and stops calling
``receive()`` stops hypercorn reading the socket: a Twilio caller, which streams 50 frames a second
until it reads our close frame, fills the queue in 200 ms, and its close reply (and FIN) then sit
unread. :meth:`AsgiCarrier.close` therefore keeps reading, and discarding, until hypercorn reports
the disconnect. The call bounds how long that may take (``close_timeout``); if the caller never
answers, the app returns and ``containment.ReleasingTaskGroup`` stops hypercorn waiting on it
(docs/library-notes.md, "the queue trap").
"""

from __future__ import annotations

from typing import Any

from ..errors import Disconnect, Reason
from ..session.carrier import CarrierClosed

__all__ = ["AsgiCarrier"]

#: The close code hypercorn sends (and, through ``fastpaths.NotifyingWSStream``, reports to the
#: app) for a message over ``websocket_max_message_size`` (RFC 6455 section 7.4.1).
MESSAGE_TOO_BIG = 1009


class AsgiCarrier:
    """:class:`voxbridge.session.CarrierSocket` over ASGI ``receive``/``send``."""

    def __init__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        self._send = send
        self._gone = False
        self._closed = False

    async def receive(self) -> str | bytes:
        # After the disconnect hypercorn queues nothing more, so another ASGI receive() would wait
        # for ever; after our own close, frames are discarded (as trio-websocket does).
        if self._gone:
            raise Disconnect(Reason.CALLER_CLOSED, "carrier already disconnected")
        if self._closed:
            raise Disconnect(Reason.CALLER_CLOSED, "carrier socket closed by us")
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            return text if text is not None else (message.get("bytes") or b"")
        self._gone = True
        code = message.get("code", 1006)
        if code == MESSAGE_TOO_BIG:  # hypercorn refused a frame over its size limit: bad input
            raise Disconnect(Reason.PROTOCOL_ERROR, "carrier frame over the size limit (1009)")
        raise CarrierClosed(code, f"carrier disconnected ({kind}, code {code})")

    async def send(self, frame: str | bytes) -> None:
        """Send ``frame``: a ``str`` as ``{"type": "websocket.send", "text": ...}`` (a text
        frame), ``bytes`` as ``{"type": "websocket.send", "bytes": ...}`` (a binary frame); only
        the one key, since hypercorn takes ``bytes`` whenever that key is not ``None``."""
        if self._gone or self._closed:
            raise Disconnect(Reason.CALLER_CLOSED, "carrier socket already closed")
        if isinstance(frame, str):
            await self._send({"type": "websocket.send", "text": frame})
        else:
            await self._send({"type": "websocket.send", "bytes": frame})

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame, then drain until hypercorn reports the disconnect.

        Unbounded by design -- the caller wraps it in ``close_timeout`` -- and cancellable at any
        point; it raises nothing else (closing is best effort by contract).
        """
        if self._gone or self._closed:
            return
        self._closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
            while not self._gone:
                message = await self._receive()
                if message["type"] != "websocket.receive":  # websocket.disconnect
                    self._gone = True
        except Exception:  # the connection is already going; closing is best effort by contract
            pass
