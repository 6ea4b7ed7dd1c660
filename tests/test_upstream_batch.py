"""The opt-in upstream batching window (``--upstream-batch-ms``), to the virtual microsecond.

In memory on the autojump clock (see ``callkit``): what the provider receives, when, and that the
window never changes when a silent caller is timed out.
"""

from __future__ import annotations

import base64

import pytest
from callkit import (
    ACCOUNT_SID,
    CALL_SID,
    STREAM_SID,
    approx,
    connected_frame,
    media_frame,
    rig,
    start_frame,
)

from voxbridge.audio import FRAME_BYTES, b64_join, b64_size, tone
from voxbridge.carriers.twilio_wire import encode_stop
from voxbridge.errors import Reason
from voxbridge.session.batch import AudioBatch
from voxbridge.settings import Settings, SettingsError
from voxbridge.testing import FakeEchoAgent


def appends(session: object) -> list[tuple[float, bytes]]:
    """(arrival time, audio) of every ``input_audio_buffer.append`` the agent received."""
    events = session.events_in  # type: ignore[attr-defined]
    times = session.events_in_at  # type: ignore[attr-defined]
    return [
        (at, base64.b64decode(e["audio"]))
        for e, at in zip(events, times, strict=True)
        if e["type"] == "input_audio_buffer.append"
    ]


# --- the pure part --------------------------------------------------------------------------------


def test_a_batch_goes_when_it_holds_a_window_of_audio() -> None:
    batch = AudioBatch(60)  # 480 bytes: three 20 ms frames
    frames = [base64.b64encode(bytes([i]) * FRAME_BYTES).decode() for i in range(3)]
    assert not batch and batch.flush_at == float("inf")
    assert batch.add(frames[0], now=10.0) is False
    assert batch.flush_at == approx(10.06)
    assert batch.add(frames[1], now=10.02) is False
    assert batch.add(frames[2], now=10.04) is True
    payload, count = batch.take()
    assert count == 3
    assert base64.b64decode(payload) == bytes([0]) * 160 + bytes([1]) * 160 + bytes([2]) * 160
    assert not batch and batch.flush_at == float("inf")


def test_a_batch_goes_when_its_oldest_frame_waited_a_window() -> None:
    batch = AudioBatch(100)
    frame = base64.b64encode(b"\xff" * FRAME_BYTES).decode()
    assert batch.add(frame, now=0.0) is False
    assert batch.add(frame, now=0.1) is True  # only 40 ms of audio, but 100 ms of waiting
    assert batch.clear() == 2 and not batch


def test_one_frame_is_passed_on_untouched() -> None:
    batch = AudioBatch(20)
    frame = base64.b64encode(b"\x01\x02\x03\x04").decode()
    assert batch.add(frame, now=0.0) is False  # 4 bytes < 160
    assert batch.take() == (frame, 1)


@pytest.mark.parametrize("sizes", [[1], [1, 2], [160, 160, 161], [3, 3, 3], [0, 5]])
def test_b64_join_and_size_handle_every_padding(sizes: list[int]) -> None:
    chunks = [bytes((i * 7 + j) % 256 for j in range(n)) for i, n in enumerate(sizes)]
    payloads = [base64.b64encode(c).decode() for c in chunks]
    assert [b64_size(p) for p in payloads] == sizes
    assert base64.b64decode(b64_join(payloads)) == b"".join(chunks)


@pytest.mark.parametrize("bad", [-1, 501, float("nan")])
def test_out_of_range_windows_are_refused(bad: float) -> None:
    with pytest.raises(SettingsError, match="--upstream-batch-ms / VOXBRIDGE_UPSTREAM_BATCH_MS"):
        Settings(upstream_batch_ms=bad)


def test_a_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AudioBatch(0)


# --- in a call ------------------------------------------------------------------------------------


async def test_streaming_caller_audio_goes_up_in_whole_windows(autojump_clock):
    audio = tone(1.0, 300)
    async with rig(Settings(upstream_batch_ms=100), agent=FakeEchoAgent(delay=0.05)) as r:
        await r.accept_sim(seconds=1.0, audio=audio)
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    sim = r.sim.result
    assert sim.frames_sent == 50
    got = appends(r.session)
    # ten appends of 100 ms each, byte-exact, each sent the instant its fifth frame arrived
    assert [len(chunk) for _, chunk in got] == [800] * 10
    assert b"".join(chunk for _, chunk in got) == audio[: 50 * FRAME_BYTES]
    first = sim.first_sent_at
    assert [at for at, _ in got] == [approx(first + (5 * k + 4) * 0.02) for k in range(10)]
    # the echo of each batch came back whole and in order (the last was still on its way when
    # the caller hung up)
    assert bytes(sim.audio_received) == audio[: 9 * 800]
    record = r.registry.recent[0]
    assert record.frames_from_caller == 50
    get = r.metrics.registry.get_sample_value
    assert get("voxbridge_media_frames_total", {"direction": "to_upstream"}) == 50


async def test_a_caller_who_pauses_has_its_audio_sent_after_one_window(autojump_clock):
    settings = Settings(upstream_batch_ms=100, idle_timeout=5)
    async with rig(settings) as r:
        script = [(0.0, connected_frame()), (0.0, start_frame())]
        script += [(1.0, media_frame(0)), (1.02, media_frame(1))]  # then silence, TCP open
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    got = appends(r.session)
    assert [(r.rel(at), len(chunk)) for at, chunk in got] == [(approx(1.1), 320)]
    # the window's own wake-up is not caller activity: silence still counts from the last frame
    assert r.upstream.close_frames == [(approx(r.t0 + 6.02), 1000, "idle_timeout")]
    assert returned == approx(6.02)
    assert r.registry.recent[0].frames_from_caller == 2
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)


def stop_script(frames: int) -> list[tuple[float, str]]:
    """Connected and start at 0, ``frames`` media frames from 1 s every 20 ms, then stop."""
    script = [(0.0, connected_frame()), (0.0, start_frame())]
    script += [(1.0 + 0.02 * i, media_frame(i)) for i in range(frames)]
    return [
        *script,
        (1.0 + 0.02 * frames - 0.01, encode_stop(STREAM_SID, CALL_SID, ACCOUNT_SID, frames + 2)),
    ]


async def test_stop_sends_what_was_gathered_first(autojump_clock):
    async with rig(Settings(upstream_batch_ms=100)) as r:
        await r.accept_script(stop_script(3))
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    got = appends(r.session)
    assert [(r.rel(at), len(chunk)) for at, chunk in got] == [(approx(1.05), 480)]
    assert r.registry.recent[0].frames_from_caller == 3
    r.assert_accounted_once(Reason.CALLER_STOP)


async def test_without_a_window_every_frame_goes_up_at_once(autojump_clock):
    async with rig(Settings()) as r:
        await r.accept_script(stop_script(3))
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    got = appends(r.session)
    assert [(r.rel(at), len(chunk)) for at, chunk in got] == [
        (approx(1.0), 160),
        (approx(1.02), 160),
        (approx(1.04), 160),
    ]
