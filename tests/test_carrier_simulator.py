"""The carrier simulator's playback: what the caller heard, marks, clears, the end of the call.

A tiny bridge-side WebSocket server in each test sends the simulator Twilio's outbound frames
(``media``, ``mark``, ``clear``; JSON written here, as Twilio documents them) on a memory stream
pair, on the autojump clock: playback is checked to the byte and marks to the virtual millisecond.
Each agent item is one constant mu-law byte, so what the caller heard of it is
``result.heard_ms(byte)``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_server_stream

from voxbridge.testing.carrier import CallResult, CarrierSimulator

BUDGET = 60.0  # virtual seconds: a hang fails at once on the autojump clock
SID = "MZ" + "0" * 32
A, B, C, D = (bytes([value]) * 8000 for value in (0x11, 0x22, 0x33, 0x44))  # 1 s each


def media(audio: bytes) -> str:
    payload = base64.b64encode(audio).decode()
    return json.dumps({"event": "media", "streamSid": SID, "media": {"payload": payload}})


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}})


def clear() -> str:
    return json.dumps({"event": "clear", "streamSid": SID})


class Bridge:
    """The bridge's end: sends ``script`` (``(at, frame)``, seconds after the accept), closes the
    WebSocket at ``close_at`` (never if ``None``), records what the simulator sends."""

    def __init__(self, script: list[tuple[float, str]], close_at: float | None) -> None:
        self.script = script
        self.close_at = close_at
        self.t0 = 0.0
        self.received: list[tuple[float, dict[str, Any]]] = []  # (seconds after t0, event)

    def marks(self) -> list[tuple[float, str]]:
        return [(t, e["mark"]["name"]) for t, e in self.received if e["event"] == "mark"]

    async def serve(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            ws = await request.accept()
            self.t0 = trio.current_time()

            async def read() -> None:
                try:
                    while True:
                        message = await ws.get_message()
                        self.received.append((trio.current_time() - self.t0, json.loads(message)))
                except ConnectionClosed:
                    pass

            nursery.start_soon(read)
            for at, frame in self.script:
                await trio.sleep_until(self.t0 + at)
                await ws.send_message(frame)
            if self.close_at is not None:
                await trio.sleep_until(self.t0 + self.close_at)
                await ws.aclose()


async def call(bridge: Bridge, **options: Any) -> CallResult:
    client, server = trio.testing.memory_stream_pair()
    simulator = CarrierSimulator(client, **options)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.serve, server)
            result = await simulator.run()
    return result


async def test_clear_cuts_the_playing_chunk_and_discards_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames_of_a = [(0.0, media(A[i : i + 160])) for i in range(0, len(A), 160)]
    bridge = Bridge(
        [
            *frames_of_a,  # plays 0.0 .. 1.0, in 50 chunks of 20 ms
            (0.0, mark("a")),
            (0.0, media(B)),  # plays from 1.0, one chunk: cut at 1.5
            (0.0, mark("b")),
            (0.0, media(D)),  # queued behind B: discarded unheard
            (0.0, mark("d")),
            (1.5, clear()),
            (1.5, media(C)),  # plays from 1.5: cut by the close at 2.0
            (1.5, mark("c")),
        ],
        close_at=2.0,
    )
    result = await call(bridge, seconds=3.0)
    t0 = bridge.t0
    assert bytes(result.played) == A + B[:4000] + C[:4000]
    assert bytes(result.audio_received) == A + B + D + C  # everything received, as before
    assert [result.heard_ms(v) for v in (0x11, 0x22, 0x33, 0x44)] == [1000.0, 500.0, 500.0, 0.0]
    assert result.heard_ms() == 2000.0
    assert [t - t0 for t in result.clears_at] == [1.5]
    assert result.heard_ms_at_clear == [1500.0]
    # "a" once A has played; "b" and "d" at the clear; "c" never: the call ended first
    assert bridge.marks() == [(pytest.approx(1.0), "a"), (1.5, "b"), (1.5, "d")]
    assert (result.marks_received, result.marks_echoed, result.clears_received) == (4, 3, 1)
    assert result.closed_at is not None and result.closed_at - t0 == 2.0
    assert result.close_code == 1000
    with pytest.raises(ValueError, match="range"):
        result.heard_ms(0x100)


async def test_audio_queued_when_the_simulator_stops_reading_is_heard_up_to_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the bridge never closes: the simulator sends 0.1 s (5 frames, the last at 0.08) and ``stop``,
    # waits close_wait (1 s) for the close, and stops reading at 1.08
    bridge = Bridge(
        [
            (0.0, media(A[:2000])),  # 0.25 s, played out by 0.25
            (0.5, media(B * 5)),  # 5 s from 0.5 (after silence): 0.58 s of it heard by 1.08
            (0.5, mark("b")),
        ],
        close_at=None,
    )
    result = await call(bridge, seconds=0.1, close_wait=1.0)
    assert result.closed_at is not None
    assert result.closed_at - bridge.t0 == pytest.approx(1.08)
    assert bytes(result.played) == A[:2000] + B[:4640]
    assert (result.heard_ms(0x11), result.heard_ms(0x22)) == (250.0, 580.0)
    assert bridge.marks() == [] and result.marks_echoed == 0
    assert result.close_code is None
    assert len(result.audio_received) == 2000 + 40000
    assert [e["event"] for _, e in bridge.received] == [
        "connected",
        "start",
        *["media"] * 5,
        "stop",
    ]
