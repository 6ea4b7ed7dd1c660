"""What the caller hears of the agent, end to end: the real server, real loopback, the shipped fakes.

Each agent item is one constant mu-law byte, so ``CallResult.heard_ms(value)`` is how much of that
item the caller heard, as the Twilio simulator played it in real time and echoed its marks. The
assertions are on what the caller heard and received, on what the provider received (truncates,
cancels) and on ``/metrics``.

Real time on loopback is noisy, so the tolerances are the honest ones: the heard position the bridge
derives from echoed marks is at most one media message (100 ms) short of the truth and never past
it, plus a few milliseconds for the mark echo and the ``clear`` to cross loopback; the caller's own
count of what it heard is exact to the sample.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from test_e2e_server import disconnects, scrape

from voxbridge.audio import BYTES_PER_MS, pcm16_to_ulaw
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import simulate_call
from voxbridge.testing.fake_openai import FakeOpenAIRealtime
from voxbridge.testing.fake_ultravox import FakeUltravox

BUDGET = 10.0  # wall seconds per test; each runs in under 4 s
FRAME_MS = 20  # one caller frame, and the fakes' default chunk
MESSAGE_MS = 100  # the most agent audio the bridge puts in one media message (one mark)
LOOPBACK_MS = 15  # a mark echo and a clear crossing loopback, and the event loop's own jitter
UV_KEY = "uv-playback-key"
NO_ECHO = 60.0  # FakeUltravox plays caller audio back this late: never, within a test

A, B, X, Y = 0x11, 0x22, 0x33, 0x44  # mu-law byte of each agent item


@asynccontextmanager
async def serving(provider_fake: Any, **settings: Any) -> AsyncIterator[RunningServer]:
    """``voxbridge serve`` (``settings``) on loopback, its provider URL ``provider_fake``'s."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(provider_fake.serve)
        server = await nursery.start(
            lambda task_status: serve(
                Settings(port=0, provider_url=url, **settings),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield server
        finally:
            stop.set()
        nursery.cancel_scope.cancel()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def item(value: int, seconds: float) -> bytes:
    """``seconds`` of mu-law audio, every byte ``value``."""
    return bytes([value]) * round(seconds * 1000 * BYTES_PER_MS)


def pcm(sample: int, seconds: float) -> bytes:
    """``seconds`` of s16le 8 kHz PCM, every sample ``sample``."""
    return struct.pack("<h", sample) * round(seconds * 8000)


def dropped(samples: Samples, provider: str, reason: str) -> float:
    labels = (("provider", provider), ("reason", reason))
    return samples[("voxbridge_provider_frames_dropped_total", labels)]


def delta(text: str) -> dict[str, Any]:
    """A raw ``response.output_audio.delta`` carrying ``text``, outside any scripted turn."""
    return {
        "type": "response.output_audio.delta",
        "response_id": "resp_raw",
        "item_id": "item_raw",
        "output_index": 0,
        "content_index": 0,
        "delta": text,
    }


def cancels(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == "response.cancel"]


# --- 1. bad provider audio ----------------------------------------------------------------------


async def test_openai_delta_that_is_not_base64_is_dropped_and_the_call_goes_on() -> None:
    good = item(A, 1.0)
    fake = FakeOpenAIRealtime(events_at=[(0.1, delta("@@@@"))], speak=[(0.3, good, "one second")])
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai") as server:
            result = await simulate_call(server.media_url, seconds=2.0)
            samples = await scrape(server)
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    # Only the valid turn reached the caller, byte for byte, and all of it was heard.
    assert bytes(result.audio_received) == good
    assert bytes(result.played) == good
    assert result.heard_ms(A) == 1000
    assert dropped(samples, "openai", "bad_audio") == 1
    assert dropped(samples, "openai", "malformed") == 0
    assert fake.sessions[0].errors_sent == []


async def test_openai_corrupt_delta_in_a_burst_drops_that_chunk_alone() -> None:
    # 50 chunks of 20 ms, each its own byte value, so the caller's audio shows which one is gone.
    chunks = [item(0x20 + k, FRAME_MS / 1000) for k in range(50)]
    fake = FakeOpenAIRealtime(
        speak=[(0.2, b"".join(chunks), "one second")], corrupt_deltas={3: "QUJ"}
    )
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai") as server:
            result = await simulate_call(server.media_url, seconds=2.0)
            samples = await scrape(server)
    session = fake.sessions[0]
    (turn,) = session.responses
    assert session.corrupted == [(3, turn.item_id)]
    assert turn.status == "completed" and turn.deltas == 50
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    expected = b"".join(chunks[:2] + chunks[3:])  # the turn minus its third chunk
    assert bytes(result.audio_received) == expected
    assert bytes(result.played) == expected
    assert result.heard_ms() == 980
    assert dropped(samples, "openai", "bad_audio") == 1
    assert dropped(samples, "openai", "malformed") == 0


async def test_ultravox_odd_length_frame_is_dropped_and_the_call_goes_on() -> None:
    speech = pcm(1000, 1.0)
    value = pcm16_to_ulaw(struct.pack("<h", 1000))[0]
    # 1 s of agent audio sent from 0.3 s to 0.5 s; the broken frame lands in the middle of it.
    fake = FakeUltravox(
        api_key=UV_KEY,
        delay=NO_ECHO,
        agent_audio=[(0.3, speech)],
        frames_at=[(0.4, b"\x00" * 321)],
    )
    with trio.fail_after(BUDGET):
        async with serving(
            fake, provider="ultravox", provider_settings={"ultravox": {"api_key": UV_KEY}}
        ) as server:
            result = await simulate_call(server.media_url, seconds=2.0)
            samples = await scrape(server)
    session = fake.sessions[0]
    assert session.frames_out == [b"\x00" * 321]  # the fault was sent
    assert bytes(session.agent_audio_out) == speech
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    # The speech and nothing else: none of the odd frame's bytes reached the caller.
    assert bytes(result.audio_received) == bytes([value]) * 8000
    assert result.heard_ms(value) == 1000
    assert dropped(samples, "ultravox", "bad_audio") == 1
    assert dropped(samples, "ultravox", "malformed") == 0


# --- 2. two items queued ------------------------------------------------------------------------


async def test_barge_in_truncates_the_heard_item_and_the_one_queued_behind_it() -> None:
    # Two 2 s answers back to back in 100 ms chunks, ten times faster than real time: A is sent
    # from 0.2 s to about 0.4 s, B from then to about 0.6 s. The caller talks at 1.2 s, about 1 s
    # into A's playback, with B queued behind A. (Both must be complete by then; the fake's pacing
    # drifts with the work per chunk, so few chunks and a wide margin keep it so under load.)
    fake = FakeOpenAIRealtime(
        speak=[(0.2, item(A, 2.0), "first"), (0.2, item(B, 2.0), "second")],
        chunk_ms=100,
        speak_pace=10.0,
        speech_started_at=[1.2],
    )
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai") as server:
            result = await simulate_call(server.media_url, seconds=2.0)
            samples = await scrape(server)
    session = fake.sessions[0]
    first, second = session.responses
    # Both answers were complete, and all of both had reached the caller, when the caller spoke.
    assert first.status == second.status == "completed"
    assert second.finished_at is not None and second.finished_at < session.speech_started_at[0]
    assert result.audio_received.count(A) == result.audio_received.count(B) == 16000
    assert result.clears_received == 1
    heard = result.heard_ms_at_clear[0]
    assert 850 <= heard <= 1150
    assert abs(result.heard_ms(A) - heard) <= 1  # what the caller heard of A: up to the clear
    assert result.heard_ms(B) == 0  # queued behind A, cleared, never heard
    assert [t["item_id"] for t in session.truncates] == [first.item_id, second.item_id]
    a_at, b_at = (t["audio_end_ms"] for t in session.truncates)
    assert 0 <= heard - a_at <= MESSAGE_MS + LOOPBACK_MS  # from marks: short, never past
    assert b_at == 0
    assert session.errors_sent == []  # the provider accepted both truncates
    assert cancels(session.events_in) == []  # no response was in progress: nothing to cancel
    assert samples[("voxbridge_barge_ins_total", ())] == 1
    assert dropped(samples, "openai", "late_audio") == 0
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")


# --- 3. late audio ------------------------------------------------------------------------------


async def test_late_audio_of_an_interrupted_answer_is_dropped_until_a_new_one() -> None:
    # X: 100 ms chunks at twice real time, one every 50 ms from 0.2 s (plus the fake's drift of
    # about a millisecond per chunk: the tenth goes at about 0.67 s, the eleventh at about 0.70 s).
    # The caller talks at 0.685 s, about 0.48 s into X, between two chunks; X's response is still
    # being generated, and three more chunks of it were already in flight. A new answer, Y,
    # follows at 1.6 s.
    fake = FakeOpenAIRealtime(
        speak=[(0.2, item(X, 2.0), "cut off"), (1.6, item(Y, 0.5), "next")],
        chunk_ms=100,
        speak_pace=2.0,
        speech_started_at=[0.685],
        late_chunks=3,
    )
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai") as server:
            result = await simulate_call(server.media_url, seconds=2.6)
            samples = await scrape(server)
    session = fake.sessions[0]
    cut, following = session.responses
    assert cut.status == "cancelled" and cut.late_deltas == 3
    assert following.status == "completed"
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    # The three late chunks were dropped and counted; none of them reached the caller.
    assert dropped(samples, "openai", "late_audio") == 3
    on_time = (cut.deltas - cut.late_deltas) * 100 * BYTES_PER_MS
    assert result.audio_received.count(X) == on_time
    # The caller heard X up to the clear and never again.
    assert result.clears_received == 1
    heard = result.heard_ms_at_clear[0]
    assert 300 <= heard <= 650
    assert abs(result.heard_ms(X) - heard) <= FRAME_MS
    # The response was in progress: cancelled by its id, then X truncated where it was heard.
    assert cancels(session.events_in) == [
        {"type": "response.cancel", "response_id": cut.response_id}
    ]
    (truncate,) = session.truncates
    assert truncate["item_id"] == cut.item_id
    assert 0 <= heard - truncate["audio_end_ms"] <= MESSAGE_MS + LOOPBACK_MS
    assert session.errors_sent == []
    # A new response ends the drop window: Y plays in full.
    assert result.audio_received.count(Y) == 4000
    assert result.heard_ms(Y) == 500


# --- 4. the agent's goodbye ---------------------------------------------------------------------

GOODBYE_SAMPLE = 1000
GOODBYE = pcm(GOODBYE_SAMPLE, 2.0)
BYE = pcm16_to_ulaw(struct.pack("<h", GOODBYE_SAMPLE))[0]


def goodbye(**knobs: Any) -> FakeUltravox:
    """A 2 s goodbye sent from 0.3 s to 0.7 s (five times real time), then the agent hangs up
    (close 1000) once it has gone out."""
    return FakeUltravox(
        api_key=UV_KEY, delay=NO_ECHO, agent_audio=[(0.3, GOODBYE)], hangup_at=0.5, **knobs
    )


async def test_goodbye_plays_out_before_the_agent_hangup_ends_the_call() -> None:
    fake = goodbye()
    with trio.fail_after(BUDGET):
        async with serving(
            fake, provider="ultravox", provider_settings={"ultravox": {"api_key": UV_KEY}}
        ) as server:
            result = await simulate_call(server.media_url, seconds=6.0)
            samples = await scrape(server)
    session = fake.sessions[0]
    assert (session.close_code, session.close_reason) == (1000, "agent hung up")
    assert (result.close_code, result.close_reason) == (1000, "agent_hangup")
    assert result.audio_received == bytes([BYE]) * 16000
    assert abs(result.heard_ms(BYE) - 2000) <= FRAME_MS
    assert result.closed_at is not None and result.first_received_at is not None
    assert result.first_sent_at is not None and session.closed_at is not None
    # The hang-up came well before the goodbye had played; the call ended after it had, and not
    # much later (not at farewell_timeout).
    assert session.closed_at - result.first_received_at < 1.0
    played_for = result.closed_at - result.first_received_at
    assert 2.0 <= played_for <= 2.0 + 0.3
    assert result.closed_at - result.first_sent_at >= 2.3
    assert disconnects(samples)["agent_hangup"] == 1


async def test_goodbye_is_cut_at_farewell_timeout() -> None:
    fake = goodbye()
    with trio.fail_after(BUDGET):
        async with serving(
            fake,
            provider="ultravox",
            provider_settings={"ultravox": {"api_key": UV_KEY}},
            farewell_timeout=0.5,
        ) as server:
            result = await simulate_call(server.media_url, seconds=6.0)
            samples = await scrape(server)
    session = fake.sessions[0]
    assert (session.close_code, session.close_reason) == (1000, "agent hung up")
    assert (result.close_code, result.close_reason) == (1000, "agent_hangup")
    assert result.closed_at is not None and result.first_received_at is not None
    assert session.closed_at is not None
    # 0.5 s after the hang-up, whatever of the goodbye was still unplayed.
    assert 0.45 <= result.closed_at - session.closed_at <= 0.5 + 0.2
    heard = result.heard_ms(BYE)
    assert heard < 2000 - 500
    assert abs(heard - (result.closed_at - result.first_received_at) * 1000) <= FRAME_MS
    assert disconnects(samples)["agent_hangup"] == 1


async def test_caller_hanging_up_during_the_goodbye_ends_the_call_at_once() -> None:
    fake = goodbye()
    with trio.fail_after(BUDGET):
        async with serving(
            fake, provider="ultravox", provider_settings={"ultravox": {"api_key": UV_KEY}}
        ) as server:
            # The caller sends `stop` at 1.4 s: after the hang-up (~0.75 s), mid-goodbye.
            result = await simulate_call(server.media_url, seconds=1.4)
            samples = await scrape(server)
            (record,) = server.app.registry.recent
    session = fake.sessions[0]
    assert (session.close_code, session.close_reason) == (1000, "agent hung up")
    assert result.closed_at is not None and result.last_sent_at is not None
    assert result.first_received_at is not None and session.closed_at is not None
    assert session.closed_at < result.last_sent_at  # the agent had hung up before the stop
    # The call ended at the stop, not when the goodbye would have finished.
    assert result.closed_at - result.last_sent_at <= 0.25
    assert result.heard_ms(BYE) < 2000 - 500
    # The agent's decision stands.
    assert (result.close_code, result.close_reason) == (1000, "agent_hangup")
    assert "the caller hung up during the goodbye" in record.detail
    ends = disconnects(samples)
    assert ends["agent_hangup"] == 1
    assert ends.get("caller_stop", 0) == 0
