"""Wire a call entirely in memory: carrier and provider WebSockets over memory streams.

With these, a call runs the production code (trio-websocket framing, the codecs, the call nursery)
with no sockets and no real time: under trio's autojump clock a 60-second idle timeout takes
milliseconds and lands on the exact virtual instant (docs/library-notes.md, "WebSockets in memory").
"""

from __future__ import annotations

from typing import Protocol

import trio
import trio.testing
from trio_websocket import wrap_server_stream

from ..session.carrier import TrioWebSocketCarrier
from ..upstream import StreamConnector

__all__ = ["accept_carrier", "memory_connector"]


class StreamServer(Protocol):
    """What serves one connection on a byte stream: a fake (``FakeEchoAgent``,
    ``FakeOpenAIRealtime``, ...) or :class:`voxbridge.echo_agent.EchoAgent`."""

    async def handle_stream(self, stream: trio.abc.Stream) -> None: ...


def memory_connector(nursery: trio.Nursery, agent: StreamServer) -> StreamConnector:
    """A ``connect_stream`` for :func:`voxbridge.run_call` that reaches ``agent`` in memory
    (``agent.handle_stream`` serves each connection, in ``nursery``)."""

    async def connect(host: str, port: int) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(agent.handle_stream, server)
        return client

    return connect


async def accept_carrier(nursery: trio.Nursery, stream: trio.abc.Stream) -> TrioWebSocketCarrier:
    """Accept the carrier's WebSocket on ``stream`` (the bridge's end of a memory pair)."""
    request = await wrap_server_stream(nursery, stream)
    return TrioWebSocketCarrier(await request.accept())
