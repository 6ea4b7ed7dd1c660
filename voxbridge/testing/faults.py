"""A stream wrapper with fault knobs, for fakes and tests (in memory or on real sockets)."""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import ConnectionClosed

__all__ = ["FaultStream", "record_close"]


class FaultStream(trio.abc.Stream):
    """Wraps a ``trio.abc.Stream``; the knobs make the peer behind it misbehave.

    * :meth:`stop_reading` -- ``receive_some`` blocks until the stream is closed: this end no
      longer reads (a frozen process, a zero receive window, a peer that answers no pings).
    * :meth:`stop_writing` -- ``send_all`` blocks until the stream is closed: what this end sends
      never leaves (a blackholed route).
    * :meth:`vanish` -- close the underlying stream abruptly, no WebSocket close frame.
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self._reading = True
        self._writing = True
        self._closed = trio.Event()

    def stop_reading(self) -> None:
        self._reading = False

    def stop_writing(self) -> None:
        self._writing = False

    async def vanish(self) -> None:
        await trio.aclose_forcefully(self)

    async def _blocked(self) -> None:
        await self._closed.wait()
        raise trio.ClosedResourceError("stream closed while blocked by a fault")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._reading:
            await self._blocked()
        data = await self.inner.receive_some(max_bytes)
        if not self._reading:  # the knob was turned while we waited: swallow what came
            await self._blocked()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._writing:
            await self._blocked()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        self._closed.set()
        await self.inner.aclose()


def record_close(session: Any, exc: ConnectionClosed) -> None:
    """Note on a fake's session record when and how the peer closed its WebSocket.

    A close code already set means the fake closed the socket itself (a fault knob) and said why.
    """
    session.closed_at = trio.current_time()
    if session.close_code is None and exc.reason is not None:
        session.close_code = exc.reason.code
        session.close_reason = exc.reason.reason
