"""Scratch experiment (P3): agent-audio coalescing under plain and patched libraries."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection

import voxbridge.upstream.connection as upstream_connection
from voxbridge.carriers.twilio_wire import encode_start, encode_stop
from voxbridge.errors import Disconnect, Reason
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.session import run_call
from voxbridge.settings import Settings
from voxbridge.testing.fake_openai import FakeOpenAIRealtime
from voxbridge.upstream.fastpaths import FastWebSocketConnection

STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "1" * 32
ACCOUNT_SID = "AC" + "2" * 32
ENDPOINT = ProviderEndpoint("fake", "ws://fake/v1/realtime")


class Corked(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.corked = False
        self.held = bytearray()

    async def send_all(self, data: Any) -> None:
        if self.corked:
            self.held += data
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def uncork(self) -> None:
        self.corked = False
        held, self.held = bytes(self.held), bytearray()
        if held:
            await self.inner.send_all(held)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()  # type: ignore[attr-defined]

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class ScriptedCarrier:
    def __init__(self, yields: int) -> None:
        self.yields = yields
        self.frames, self._frames = trio.open_memory_channel[str](100)
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def receive(self) -> str | bytes:
        try:
            return await self._frames.receive()
        except trio.EndOfChannel:
            raise Disconnect(Reason.CALLER_CLOSED, "gone") from None

    async def send(self, frame: str | bytes) -> None:
        self.sent.append((trio.current_time(), orjson.loads(frame)))
        for _ in range(self.yields):
            await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str) -> None:
        pass


def delta(item: str, response: str, n: int) -> dict[str, Any]:
    audio = bytes([n]) * 160
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }


BURSTS = [
    (1.0, [delta("item_a", "resp_a", i) for i in range(1, 9)]),
    (1.5, [delta("item_x", "resp_x", i) for i in range(20, 60)]),
    (2.0, [delta("item_b", "resp_b", i) for i in range(11, 14)] + [delta("item_c", "resp_b", i) for i in range(14, 17)]),
]


async def one_call(yields: int) -> list[tuple[str, int]]:
    events = [(at, e) for at, burst in BURSTS for e in burst]
    fake = FakeOpenAIRealtime(events_at=events)
    corks: list[Corked] = []
    carrier = ScriptedCarrier(yields)
    async with trio.open_nursery() as nursery:

        async def connect(host: str, port: int) -> trio.abc.Stream:
            client, server = trio.testing.memory_stream_pair()
            corked = Corked(server)
            corks.append(corked)
            nursery.start_soon(fake.handle_stream, corked)
            return client

        async def script(t0: float) -> None:
            await carrier.frames.send(encode_start(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number=1))
            await fake.wait_for_session(1)
            t0 = fake.sessions[0].opened_at
            for at, _ in BURSTS:
                await trio.sleep_until(t0 + at - 0.01)
                corks[0].corked = True
                await trio.sleep_until(t0 + at + 0.01)
                await corks[0].uncork()
            await trio.sleep_until(t0 + 3)
            await carrier.frames.send(encode_stop(STREAM_SID, CALL_SID, ACCOUNT_SID, 2))

        nursery.start_soon(script, trio.current_time())
        disconnect = await run_call(
            carrier, ENDPOINT, settings=Settings(idle_timeout=100), connect_stream=connect
        )
    assert disconnect.reason is Reason.CALLER_STOP, disconnect
    out = []
    for _, frame in carrier.sent:
        if frame["event"] == "media":
            audio = base64.b64decode(frame["media"]["payload"])
            out.append(("media", audio[::160].hex()))
        elif frame["event"] == "mark":
            out.append(("mark", 0))
    return out


@pytest.mark.parametrize("reader", ["plain", "fast"])
@pytest.mark.parametrize("yields", [0, 1, 2, 5])
async def test_experiment(autojump_clock, monkeypatch, reader, yields):
    cls = WebSocketConnection if reader == "plain" else FastWebSocketConnection
    monkeypatch.setattr(upstream_connection, "WEBSOCKET_CONNECTION", cls)
    results = set()
    for _ in range(6):
        frames = await one_call(yields)
        results.add(tuple(f for f in frames if f[0] == "media"))
    print(reader, yields, results)
    assert len(results) == 1, results
