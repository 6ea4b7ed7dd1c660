"""The carrier socket of a call served over ASGI (hypercorn's trio worker).

hypercorn reports close code 1006 for every peer close and silently ignores sends after the peer
left (LIBRARY_FACTS 6), so this transport learns that the carrier is gone only from the
``websocket.disconnect`` message; the call's deadlines and the Twilio ``stop`` cover the rest.
"""

from __future__ import annotations

from typing import Any

from ..errors import Disconnect, Reason

__all__ = ["AsgiCarrier"]


class AsgiCarrier:
    """:class:`voxbridge.session.CarrierSocket` over ASGI ``receive``/``send``."""

    def __init__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        self._send = send
        self._gone = False
        self._closed = False

    async def receive(self) -> str | bytes:
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            return text if text is not None else (message.get("bytes") or b"")
        self._gone = True
        code = message.get("code", 1006)
        raise Disconnect(Reason.CALLER_CLOSED, f"carrier disconnected ({kind}, code {code})")

    async def send(self, frame: str) -> None:
        if self._gone or self._closed:
            raise Disconnect(Reason.CALLER_CLOSED, "carrier socket already closed")
        await self._send({"type": "websocket.send", "text": frame})

    async def close(self, code: int, reason: str) -> None:
        if self._gone or self._closed:
            return
        self._closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:  # the connection is already going; closing is best effort by contract
            pass
