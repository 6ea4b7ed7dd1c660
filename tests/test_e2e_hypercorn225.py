"""hypercorn issue #225 (docs/library-notes.md): one bad connection must not take the server down.

The trigger is exact: a WebSocket upgrade request followed by one stray byte. Unpatched,
``h11.LocalProtocolError`` escapes hypercorn's per-connection ``TCPServer.run`` into the server
nursery and every live call drops. The first test shows the trap is real on the installed hypercorn
(its own ``TCPServer``, ``TaskGroup`` and ``WSStream``, so the second one proves something).

The error needs the app's answer and hypercorn's own 400 for the stray byte to interleave, which
the yields of hypercorn's reader (queueing ``websocket.connect``) and of its writes (the send lock,
``send_all``) allowed. With voxbridge's per-message fast paths (library-notes.md) neither yields on
a plain connection, so the reader answers the stray byte with its 400 before the app runs (and
``NotifyingWSStream`` tells the app: tests/test_server_fastpaths.py). The second test sends those
bytes, and a request that still fails inside ``TCPServer.run`` whatever the order (a non-ASCII
``Sec-WebSocket-Extensions``, found by tests/test_e2e_fuzz.py), while a healthy call runs.
"""

from __future__ import annotations

import base64
import os

import httpx
import hypercorn.protocol.h11
import hypercorn.trio.run
import hypercorn.trio.tcp_server
import pytest
import trio
from hypercorn.config import Config
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from test_e2e_fuzz import request, upgrade_headers, ws_key
from test_e2e_server import running, scrape

from voxbridge.server.containment import ContainedTCPServer, install
from voxbridge.server.fastpaths import FastTCPServer
from voxbridge.testing import simulate_call


def trigger_bytes() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\nx"
    )


def killer_bytes() -> bytes:
    """An upgrade whose ``Sec-WebSocket-Extensions`` is not ASCII: ``UnicodeDecodeError`` escapes
    ``TCPServer.run`` whatever the order of reader and app (tests/test_e2e_fuzz.py found it)."""
    headers = [*upgrade_headers(ws_key()), (b"Sec-WebSocket-Extensions", b"\xff")]
    return request(b"GET", b"/twilio/media", headers)


async def send_trigger(port: int, data: bytes | None = None) -> bytes:
    """Send ``data`` (the #225 trigger if omitted); return what the server sent in 1 s."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    try:
        await stream.send_all(trigger_bytes() if data is None else data)
        with trio.move_on_after(1.0):
            while chunk := await stream.receive_some():
                received += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)
    return received


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
    monkeypatch.setattr(hypercorn.trio.tcp_server, "TaskGroup", TaskGroup)
    monkeypatch.setattr(hypercorn.protocol.h11, "WSStream", WSStream)
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


async def test_trigger_is_contained_while_a_healthy_call_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert install() is True
    # the containment with its per-message fast paths (tests/test_server_fastpaths.py)
    assert hypercorn.trio.run.TCPServer is FastTCPServer
    assert issubclass(FastTCPServer, ContainedTCPServer)
    answers = []
    with trio.fail_after(20):
        async with running() as (server, agent):
            results = []

            async def healthy_call() -> None:
                results.append(await simulate_call(server.media_url, seconds=1.5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy_call)
                await agent.wait_for_session()
                for _ in range(3):
                    answers.append(await send_trigger(server.port))
                    await send_trigger(server.port, killer_bytes())
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
    # The #225 bytes: hypercorn answers the stray byte (400) before the app runs; the app still
    # refuses the unknown WebSocket path (counted), into a stream that is closed already.
    assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [b"HTTP/1.1 400 "] * 3
    contained = [
        record.exc_info[1]
        for record in caplog.records
        if record.getMessage().startswith("connection failed and was contained")
        and record.exc_info is not None
    ]
    assert len(contained) == 3, contained
    for error in contained:  # each the killer's error, wrapped by hypercorn's nurseries or not
        matcher = pytest.RaisesGroup(
            UnicodeDecodeError, allow_unwrapped=True, flatten_subgroups=True
        )
        assert matcher.matches(error), error
    # three refusals by the app, three connections contained
    assert samples[("voxbridge_connections_rejected_total", (("reason", "bad_request"),))] == 6
    assert (after.close_code, after.close_reason) == (1000, "caller_stop")
