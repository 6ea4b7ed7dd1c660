"""The fake Ultravox's WebSocket knobs: scripted agent audio, raw frames, a hang-up after goodbye.

In memory on the autojump clock (a call registered on the fake by hand, its WebSocket served on a
memory stream pair), so pacing and close times are asserted to the virtual millisecond. The REST
side and the provider against the fake over loopback are ``tests/test_ultravox.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from voxbridge.testing.fake_ultravox import CallRequest, FakeUltravox, UltravoxSession

BUDGET = 60.0  # virtual seconds: a hang fails at once on the autojump clock
KEY = "uv-test-key"
GOODBYE = bytes(range(256)) * 125  # 2 s of s16le 8 kHz (32000 bytes): 100 frames of 320


@asynccontextmanager
async def joined(fake: FakeUltravox) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket on a call created on ``fake`` by hand, over memory streams."""
    call_id = f"call-{len(fake.calls) + 1}"
    fake.calls[call_id] = CallRequest(KEY, body={}, query={}, status=201, call_id=call_id)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.handle_stream, server)
        ws = await wrap_client_stream(
            nursery,
            client,  # type: ignore[arg-type]
            "localhost",
            f"/calls/{call_id}?apiVersion=1",
            message_queue_size=256,
        )
        try:
            yield ws
        finally:
            await ws.aclose()


Frames = list[tuple[float, bytes | str]]


async def until_closed(ws: WebSocketConnection, t0: float) -> tuple[Frames, float, int, str]:
    """Every frame received with its arrival time after ``t0``, then the close time, code, reason."""
    frames: Frames = []
    try:
        while True:
            frame = await ws.get_message()
            frames.append((trio.current_time() - t0, frame))
    except ConnectionClosed as exc:
        assert exc.reason is not None
        return frames, trio.current_time() - t0, exc.reason.code, str(exc.reason.reason)


def binary(frames: Frames) -> Frames:
    return [(t, f) for t, f in frames if isinstance(f, bytes)]


async def test_agent_audio_is_sent_in_chunk_frames_faster_than_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, second = GOODBYE[:3200], bytes(range(100))  # 100 ms (10 frames), then 100 bytes
    fake = FakeUltravox(KEY, agent_audio=[(0.1, first), (0.11, second)], close_at=(1.0, 1011))
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session: UltravoxSession = await fake.wait_for_session()
            frames, _, code, _ = await until_closed(ws, session.opened_at)
    audio = binary(frames)
    # 20 ms frames at 5x: one every 4 ms; the second speech waits for the first (0.1 + 10 * 4 ms)
    assert [t for t, _ in audio] == pytest.approx([0.1 + i * 0.004 for i in range(10)] + [0.14])
    assert [len(f) for _, f in audio] == [320] * 10 + [100]
    assert b"".join(f for _, f in audio if isinstance(f, bytes)) == first + second
    assert bytes(session.agent_audio_out) == first + second
    assert (session.agent_frames_out, session.audio_out, session.frames_out) == (11, 0, [])
    assert code == 1011


async def test_agent_audio_chunk_ms_and_all_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pcm = bytes(range(250)) * 4  # 1000 bytes: frames of 30 ms (480 bytes) -> 480, 480, 40
    fake = FakeUltravox(
        KEY, agent_audio=[(0.25, pcm)], chunk_ms=30, speak_pace=math.inf, hangup_at=0.5
    )
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed_at, code, _ = await until_closed(ws, session.opened_at)
    assert [(t, len(f)) for t, f in binary(frames)] == [(0.25, 480), (0.25, 480), (0.25, 40)]
    assert bytes(session.agent_audio_out) == pcm
    assert (closed_at, code) == (0.5, 1000)


@pytest.mark.parametrize(
    ("agent_audio", "closed_at"),
    [
        ([(0.0, GOODBYE)], 0.5),  # goodbye sent by 0.4, hang-up on time at 0.5
        ([(0.2, GOODBYE)], 0.6),  # goodbye still going at 0.5: the hang-up waits for it
        ([(0.5, GOODBYE)], 0.9),  # due at the hang-up itself: it goes first
        ([(0.0, GOODBYE), (0.7, GOODBYE)], 0.5),  # audio due after the hang-up is not waited for
    ],
)
async def test_hangup_comes_after_the_goodbye_audio(
    autojump_clock: trio.testing.MockClock,
    agent_audio: list[tuple[float, bytes]],
    closed_at: float,
) -> None:
    fake = FakeUltravox(KEY, agent_audio=agent_audio, hangup_at=0.5)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed, code, reason = await until_closed(ws, session.opened_at)
            await session.wait_closed()
    audio = binary(frames)
    assert len(audio) == 100
    assert b"".join(f for _, f in audio if isinstance(f, bytes)) == GOODBYE
    assert audio[-1][0] < closed  # the whole goodbye went out before the close frame
    assert closed == pytest.approx(closed_at)
    assert (code, reason) == (1000, "agent hung up")
    assert (session.close_code, session.close_reason) == (1000, "agent hung up")
    assert bytes(session.agent_audio_out) == GOODBYE
    assert [m["type"] for m in session.sent] == ["call_started", "state"]


async def test_frames_at_sends_raw_frames_as_given(
    autojump_clock: trio.testing.MockClock,
) -> None:
    odd = b"\x00\x01\x02"  # not whole 16-bit samples
    broken = '{"type": "transcript", "role": '
    fake = FakeUltravox(KEY, frames_at=[(0.2, broken), (0.1, odd)], hangup_at=0.3)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed_at, code, _ = await until_closed(ws, session.opened_at)
    assert frames[2:] == [(0.1, odd), (0.2, broken)]  # after call_started and state
    assert (closed_at, code) == (0.3, 1000)
    assert session.frames_out == [odd, broken]
    assert session.agent_audio_out == bytearray() and session.agent_frames_out == 0


def test_agent_audio_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        FakeUltravox(KEY, chunk_ms=0)
    with pytest.raises(ValueError, match="positive"):
        FakeUltravox(KEY, speak_pace=0.0)
