"""``CarrierSocket.send`` carries text and binary frames (a carrier like Vonage streams its audio in
binary frames): the ASGI transport under a real hypercorn on loopback, and the trio-websocket one
in memory."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import open_websocket_url, wrap_client_stream

from voxbridge.errors import Disconnect, Reason
from voxbridge.server.asgi_carrier import AsgiCarrier
from voxbridge.testing.memory import accept_carrier

BUDGET = 10.0  # wall seconds
AUDIO = bytes(range(256)) * 3  # every byte value, as binary audio would carry them


async def test_asgi_send_builds_a_text_or_a_bytes_message() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    carrier = AsgiCarrier(receive, send)
    await carrier.send('{"event":"clear"}')
    await carrier.send(AUDIO)
    # exactly one of the keys: hypercorn sends a binary frame whenever "bytes" is not None
    assert sent == [
        {"type": "websocket.send", "text": '{"event":"clear"}'},
        {"type": "websocket.send", "bytes": AUDIO},
    ]


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept, then answer every frame with itself as a text frame and as a binary frame, through
    ``AsgiCarrier`` (a text frame's UTF-8 bytes; a binary frame's bytes and their hex)."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        carrier = AsgiCarrier(receive, send)
        try:
            while True:
                frame = await carrier.receive()
                if isinstance(frame, str):
                    await carrier.send(frame)
                    await carrier.send(frame.encode())
                else:
                    await carrier.send(frame.hex())
                    await carrier.send(frame)
        except Disconnect as gone:
            assert gone.reason is Reason.CALLER_CLOSED
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return


async def test_asgi_carrier_sends_binary_frames_through_hypercorn() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    stop = trio.Event()
    received: list[str | bytes] = []
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: hypercorn_serve(
                    _echo_app,  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            port = int(binds[0].rsplit(":", 1)[1])
            async with open_websocket_url(f"ws://127.0.0.1:{port}/vonage/media") as ws:
                await ws.send_message('{"event":"websocket:connected"}')
                await ws.send_message(AUDIO)
                for _ in range(4):
                    received.append(await ws.get_message())
            stop.set()
    assert received == [
        '{"event":"websocket:connected"}',
        b'{"event":"websocket:connected"}',
        AUDIO.hex(),
        AUDIO,
    ]
    assert [type(frame) for frame in received] == [str, bytes, str, bytes]


async def test_trio_websocket_carrier_sends_binary_frames() -> None:
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            client_end, server_end = trio.testing.memory_stream_pair()
            client_ready = trio.Event()
            received: list[str | bytes] = []

            async def client() -> None:
                ws = await wrap_client_stream(nursery, client_end, "localhost", "/vonage/media")
                client_ready.set()
                await ws.send_message(AUDIO)
                received.append(await ws.get_message())
                received.append(await ws.get_message())
                await ws.aclose()

            nursery.start_soon(client)
            carrier = await accept_carrier(nursery, server_end)
            await client_ready.wait()
            assert await carrier.receive() == AUDIO
            await carrier.send(AUDIO[::-1])
            await carrier.send("text")
            await carrier.close(1000, "caller_stop")
    assert received == [AUDIO[::-1], "text"]
