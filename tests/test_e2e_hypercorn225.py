"""hypercorn issue #225 (docs/library-notes.md): one bad connection must not take the server down.

The trigger is exact: a WebSocket upgrade request followed by one stray byte. Unpatched,
``h11.LocalProtocolError`` escapes hypercorn's per-connection ``TCPServer.run`` into the server
nursery and every live call drops. The first test shows the trap is real on the installed hypercorn
(so the second one proves something); the second sends the bytes while a healthy call runs.
"""

from __future__ import annotations

import base64
import os

import httpx
import hypercorn.trio.run
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from test_e2e_server import running, scrape

from voxbridge.server.containment import ContainedTCPServer, install
from voxbridge.testing import simulate_call


def trigger_bytes() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\nx"
    )


async def send_trigger(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(trigger_bytes())
        with trio.move_on_after(1.0):
            while await stream.receive_some():
                pass
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _websocket_app(scope: dict[str, object], receive: object, send: object) -> None:
    """The smallest app that accepts WebSockets: enough to reach the bug."""
    if scope["type"] == "websocket":
        await receive()  # type: ignore[operator]
        await send({"type": "websocket.accept"})  # type: ignore[operator]
        while (await receive())["type"] != "websocket.disconnect":  # type: ignore[operator]
            pass
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()  # type: ignore[operator]
            await send({"type": message["type"] + ".complete"})  # type: ignore[operator]
            if message["type"] == "lifespan.shutdown":
                return


async def test_unpatched_hypercorn_dies_on_the_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", TCPServer)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(Exception, allow_unwrapped=True, flatten_subgroups=True) as died,
    ):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, _websocket_app, config)
            await send_trigger(int(binds[0].rsplit(":", 1)[1]))
            await trio.sleep_forever()  # not reached: the server nursery fails first
    assert "LocalProtocolError" in repr(died.value)


async def test_trigger_is_contained_while_a_healthy_call_runs() -> None:
    assert install() is True
    assert hypercorn.trio.run.TCPServer is ContainedTCPServer
    with trio.fail_after(20):
        async with running() as (server, agent):
            results = []

            async def healthy_call() -> None:
                results.append(await simulate_call(server.media_url, seconds=1.5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy_call)
                await agent.wait_for_session()
                for _ in range(3):
                    await send_trigger(server.port)
            async with httpx.AsyncClient(timeout=5) as client:
                health = await client.get(f"{server.url}/healthz")
            samples = await scrape(server)
            # and the server still takes new calls after it
            after = await simulate_call(server.media_url, seconds=0.3)

    call = results[0]
    assert call.frames_sent == 75
    assert call.frames_received > 0
    assert (call.close_code, call.close_reason) == (1000, "caller_stop")
    assert health.status_code == 200
    # Each trigger counts twice as a bad request: the app refuses the unknown WebSocket path (404),
    # then hypercorn's connection fails on the stray byte and voxbridge contains it.
    assert samples[("voxbridge_connections_rejected_total", (("reason", "bad_request"),))] == 6
    assert (after.close_code, after.close_reason) == (1000, "caller_stop")
