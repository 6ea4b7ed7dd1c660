"""The upstream edge: one provider socket, its errors mapped, its reader contained.

In memory on the autojump clock, against a provider written with wsproto directly, so the test
controls the exact order of frames on the wire.
"""

from __future__ import annotations

import logging

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

from voxbridge.errors import UpstreamClosed
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.upstream import Upstream

ENDPOINT = ProviderEndpoint("openai", "ws://provider.invalid/v1/realtime")


async def pinging_while_closing(stream: trio.abc.Stream) -> None:
    """Accept, then answer our close frame with a ping first, and the close reply after it."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some()
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
            elif isinstance(event, CloseConnection):
                # wsproto will not send a ping once closing: the frame by hand (RFC 6455 5.5.2)
                ping = bytes([0x89, len(b"late")]) + b"late"
                await stream.send_all(ping + ws.send(event.response()))


async def test_a_ping_during_our_close_handshake_closes_the_socket_not_the_call(
    autojump_clock, caplog
):
    # trio-websocket answers the ping with a pong that wsproto refuses once we are closing
    # (trio-websocket issue #184); its reader raises, and before 0.2 that escaped into the call's
    # sockets nursery and out of run_call. Now the socket is closed; nothing escapes. The close
    # handshake cannot complete without a reader: the caller's bound (close_timeout) ends it.
    caplog.set_level(logging.INFO, logger="voxbridge.upstream")
    async with trio.open_nursery() as nursery:
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(pinging_while_closing, server)

        async def connect(host: str, port: int) -> trio.abc.Stream:
            return client

        upstream = await Upstream.open(
            nursery, ENDPOINT, connect_stream=connect, live_until=trio.current_time() + 60
        )
        with trio.move_on_after(2) as bound:
            await upstream.aclose(1000, "caller_stop")
        assert bound.cancelled_caught
        assert upstream.closed
        try:
            await upstream.send("{}")
        except UpstreamClosed:
            pass
        else:  # pragma: no cover - the socket must be closed
            raise AssertionError("a send on a closed session went through")
    # the nursery exited: the reader's host task ended, and nothing was raised into it
    failures = [r for r in caplog.records if "reader failed" in r.getMessage()]
    assert len(failures) == 1
    assert "LocalProtocolError" in repr(failures[0].exc_info)
