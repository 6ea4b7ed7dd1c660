"""The call with real provider behaviour, in memory on the autojump clock: resume, recycle,
barge-in, transcripts, provider faults. The provider is ``FakeOpenAIRealtime`` (every event it
sends validates against the official ``openai`` types, see test_fake_openai.py); the caller is the
Twilio carrier simulator, which plays agent audio in real time and echoes marks as Twilio does.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import string
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest import approx

from voxbridge.audio import FRAME_BYTES, b64_decode, tone
from voxbridge.errors import Disconnect, Reason
from voxbridge.journal import MemoryJournal
from voxbridge.metrics import Metrics
from voxbridge.providers.events import Transcript
from voxbridge.providers.openai_realtime import OpenAIProvider, OpenAIRealtimeCodec
from voxbridge.session import CallRegistry, CarrierSocket, run_call
from voxbridge.settings import Settings
from voxbridge.testing import CallResult, CarrierSimulator
from voxbridge.testing.fake_openai import FakeOpenAIRealtime
from voxbridge.testing.memory import accept_carrier, memory_connector


class Outcome:
    def __init__(self) -> None:
        self.disconnect: Disconnect | None = None
        self.caller: CallResult | None = None
        self.metrics = Metrics()
        self.registry = CallRegistry()
        self.journal = MemoryJournal()
        self.ended_at = 0.0
        self.carrier: RecordingCarrier | None = None

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value


class RecordingCarrier:
    """The bridge's carrier socket, recording every frame the bridge sends the caller."""

    def __init__(self, inner: CarrierSocket) -> None:
        self.inner = inner
        self.sent: list[str | bytes] = []

    async def receive(self) -> str | bytes:
        return await self.inner.receive()

    async def send(self, frame: str | bytes) -> None:
        self.sent.append(frame)
        await self.inner.send(frame)

    async def close(self, code: int, reason: str) -> None:
        await self.inner.close(code, reason)


@asynccontextmanager
async def bridged(
    fake: FakeOpenAIRealtime,
    settings: Settings,
    *,
    provider_type: type[OpenAIProvider] = OpenAIProvider,
    call_options: dict[str, Any] | None = None,
    journal: MemoryJournal | None = None,
    carrier_type: Callable[[CarrierSocket], RecordingCarrier] | None = None,
    **caller: Any,
) -> AsyncIterator[Outcome]:
    """One call: simulator -> bridge -> fake, all in memory. The body runs alongside the call.

    ``call_options`` go to ``run_call`` (tools, agent, codec, ...); ``caller`` to the simulator;
    ``carrier_type`` wraps the bridge's carrier socket (default :class:`RecordingCarrier`)."""
    outcome = Outcome()
    if journal is not None:
        outcome.journal = journal
    with trio.fail_after(10_000):  # virtual seconds: a hang fails instead of spinning for ever
        async with trio.open_nursery() as nursery:
            caller_end, bridge_end = trio.testing.memory_stream_pair()
            simulator = CarrierSimulator(caller_end, close_wait=500, **caller)

            done = [trio.Event(), trio.Event()]

            async def call() -> None:
                outcome.caller = await simulator.run()
                done[0].set()

            nursery.start_soon(call)
            wrap = carrier_type if carrier_type is not None else RecordingCarrier
            carrier = outcome.carrier = wrap(await accept_carrier(nursery, bridge_end))
            provider = provider_type(fake.endpoint(), instructions="be brief")

            async def bridge() -> None:
                outcome.disconnect = await run_call(
                    carrier,
                    provider,
                    settings=settings,
                    metrics=outcome.metrics,
                    registry=outcome.registry,
                    journal=outcome.journal,
                    connect_stream=memory_connector(nursery, fake),  # type: ignore[arg-type]
                    **(call_options or {}),
                )
                outcome.ended_at = trio.current_time()
                done[1].set()

            nursery.start_soon(bridge)
            yield outcome
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()  # a frozen fake never finishes on its own
    assert outcome.disconnect is not None


async def served(fake: FakeOpenAIRealtime) -> FakeOpenAIRealtime:
    fake.url = "ws://fake.invalid/v1/realtime"  # reached in memory; the URL only names it
    return fake


async def test_barge_in_truncates_at_what_the_caller_heard(autojump_clock: Any) -> None:
    speech = tone(3.0, 300)
    fake = await served(
        FakeOpenAIRealtime(speak=[(0.5, speech, "a long answer")], speech_started_at=[1.7])
    )
    t0 = trio.current_time()
    async with bridged(fake, Settings(), seconds=4.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    session = fake.sessions[0]
    assert caller.clears_received == 1
    assert len(session.truncates) == 1
    truncate = session.truncates[0]
    heard = caller.heard_ms_at_clear[0]
    # The agent spoke from 0.5 s (5x real time); playback began as audio arrived; speech started
    # at 1.7 s: the caller had heard 1.2 s of it. The truncate says so, within one 20 ms frame.
    assert heard == approx(1200, abs=1)
    assert abs(truncate["audio_end_ms"] - heard) <= 20
    assert truncate["item_id"] == session.responses[0].item_id
    assert outcome.sample("voxbridge_barge_ins_total") == 1
    assert outcome.registry.recent[0].barge_ins == 1
    assert trio.current_time() - t0 < 10


async def test_no_barge_in_when_the_agent_is_silent(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(speech_started_at=[1.0]))
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    assert outcome.caller is not None
    assert outcome.caller.clears_received == 0
    assert fake.sessions[0].truncates == []
    assert outcome.sample("voxbridge_barge_ins_total") == 0


async def test_transcripts_are_collected_in_order_and_journaled(autojump_clock: Any) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "hello there")],
            speak=[(1.0, tone(0.2), "hi, how can I help?")],
        )
    )
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    record = outcome.registry.recent[0]
    assert [(t.role, t.text) for t in record.transcript] == [
        ("caller", "hello there"),
        ("agent", "hi, how can I help?"),
    ]
    assert [t.text for t in outcome.journal.lines[record.call_id]] == [
        "hello there",
        "hi, how can I help?",
    ]
    assert outcome.journal.records[0] == record


@pytest.mark.parametrize("batch_ms", [0, 100])
async def test_provider_drop_is_resumed_with_the_conversation_replayed(
    autojump_clock: Any, batch_ms: int
) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            echo_delay=0.05,
            caller_transcripts=[(0.5, "my order number is 42")],
            close_at=(2.0, 1011),
            only_session=1,
        )
    )
    async with bridged(fake, Settings(upstream_batch_ms=batch_ms), seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP  # the call survived the drop
    first, second = fake.sessions
    assert first.close_code == 1011
    # the new session was seeded with what was said before the drop
    creates = [e for e in second.events_in if e["type"] == "conversation.item.create"]
    assert [c["item"]["content"][0]["text"] for c in creates] == ["my order number is 42"]
    assert second.events_in[0]["type"] == "session.update"
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="failed") == 0
    # audio kept flowing after the resume, and what arrived while resuming was dropped, not queued
    assert second.audio_in > 0
    frames_in = (first.audio_in_bytes + second.audio_in_bytes) // FRAME_BYTES
    assert outcome.caller.frames_sent == frames_in + outcome.sample(
        "voxbridge_media_frames_dropped_total", direction="to_upstream"
    )
    assert outcome.registry.recent[0].frames_from_caller == frames_in
    if batch_ms:  # every append but the last carried a whole 100 ms window
        sizes = [s.audio_in_bytes for s in (first, second)]
        assert first.audio_in == math.ceil(sizes[0] / 800)
        assert second.audio_in == math.ceil(sizes[1] / 800)
    assert outcome.registry.recent[0].resumes == 1
    assert second.closed.is_set() and second.close_code == 1000


async def test_resume_budget_exhausted_ends_with_upstream_closed(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(close_at=(1.0, 1011)))
    # every session drops after 1 s; the third connection onwards is refused
    fake_refusing = fake

    async def refuse_after_first() -> None:
        await fake.wait_for_session(1)
        fake_refusing.refuse_status = 503

    t0 = trio.current_time()
    async with bridged(fake, Settings(reconnect_budget=3), seconds=20.0) as outcome:
        await refuse_after_first()
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_CLOSED
    assert outcome.ended_at - t0 == approx(1.0 + 3.0, abs=0.01)  # drop + budget
    assert outcome.caller.close_code == 1011
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="failed") == 1
    assert all(s.closed.is_set() for s in fake.sessions)


async def test_session_expired_is_resumed_seamlessly(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05, session_expired_at=1.5, only_session=1))
    async with bridged(fake, Settings(), seconds=4.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.close_code == 1001
    assert second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1


async def test_session_is_recycled_before_it_gets_too_old(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05, caller_transcripts=[(1.0, "hi")]))
    settings = Settings(session_max_age=3.0, idle_timeout=100)
    async with bridged(fake, settings, seconds=8.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.sessions) == 3  # opened at 0, recycled at 3 and 6
    first, second, third = fake.sessions
    # make before break: the next session was open before the old one closed
    assert second.opened_at <= first.closed_at
    assert third.opened_at <= second.closed_at
    assert (first.close_code, first.close_reason) == (1000, "recycled")
    creates = [e for e in second.events_in if e["type"] == "conversation.item.create"]
    assert len(creates) == 1
    # nothing was dropped: the caller's audio always had a session to go to
    assert outcome.sample("voxbridge_media_frames_dropped_total", direction="to_upstream") == 0
    assert outcome.caller.frames_sent == sum(s.audio_in for s in fake.sessions)


@pytest.mark.parametrize(
    ("knobs", "settings", "reason", "code", "ended", "connections"),
    [
        # a refusal is final, even with retries allowed
        ({"refuse_status": 403}, {}, Reason.UPSTREAM_REJECTED, 1011, 0.0, 1),
        ({"close_at": (1.0, 1008)}, {}, Reason.UPSTREAM_REJECTED, 1011, 1.0, 1),
        # a refusal that may pass (rate limit, overload) is retried until connect_timeout
        ({"refuse_status": 503}, {}, Reason.UPSTREAM_CONNECT_FAILED, 1011, 10.0, None),
        ({"handshake_delay": 30}, {}, Reason.UPSTREAM_CONNECT_FAILED, 1011, 10.0, 1),
        ({"close_at": (1.0, 1011)}, {"reconnect_budget": 0}, Reason.UPSTREAM_CLOSED, 1011, 1.0, 1),
        # the ping at 20 gets no pong: dropped at 30, and with no resume that ends the call
        (
            {"stop_reading_at": 1.0},
            {"reconnect_budget": 0},
            Reason.UPSTREAM_KEEPALIVE_TIMEOUT,
            1011,
            30.0,
            1,
        ),
    ],
    ids=[
        "refuse",
        "close-1008-refuses",
        "refuse-503-retried",
        "slow-handshake",
        "close-mid-call",
        "stop-reading",
    ],
)
async def test_provider_faults_end_in_their_reason(
    autojump_clock: Any,
    knobs: dict[str, Any],
    settings: dict[str, Any],
    reason: Reason,
    code: int,
    ended: float,
    connections: int | None,
) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05, **knobs))
    t0 = trio.current_time()
    async with bridged(fake, Settings(**settings), seconds=60.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is reason
    assert outcome.ended_at - t0 == approx(ended, abs=1e-6)
    assert outcome.caller.close_code == code
    assert outcome.caller.close_reason == reason.value
    assert all(s.closed.is_set() for s in fake.sessions)
    assert outcome.sample("voxbridge_call_disconnects_total", reason=reason.value) == 1
    if connections is None:  # retried with backoff, jittered: 0.1 s doubling up to 2 s
        assert 4 <= fake.connections <= 16
    else:
        assert fake.connections == connections


@pytest.mark.parametrize("resumes", [True, False], ids=["resumed", "resume-refused"])
async def test_a_frozen_provider_is_resumed_within_the_budget(
    autojump_clock: Any, resumes: bool
) -> None:
    """The first session stops reading at 1 s: the ping at 20 gets no pong, and at 30 the session
    is aborted and resumed. A healthy second session carries the call to the
    caller's stop; if every new connection is refused, the call ends when reconnect_budget is
    spent (30 + 5), with the reason of the drop."""
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05, stop_reading_at=1.0, only_session=1))

    async def refuse_after_first() -> None:
        await fake.wait_for_session(1)
        fake.refuse_status = 503
        fake.only_session = None

    t0 = trio.current_time()
    async with bridged(fake, Settings(), seconds=60.0) as outcome:
        if not resumes:
            await refuse_after_first()
    assert outcome.disconnect is not None and outcome.caller is not None
    if resumes:
        assert outcome.disconnect.reason is Reason.CALLER_STOP
        assert outcome.ended_at - t0 == approx(59.98, abs=1e-6)
        second = fake.sessions[1]
        assert len(fake.sessions) == 2
        assert second.opened_at - t0 == approx(30, abs=1e-6)
        assert second.events_in[0]["type"] == "session.update"
        assert second.audio_in > 0 and second.audio_out > 0  # audio flowed again, both ways
        assert (second.close_code, second.close_reason) == (1000, "caller_stop")
        assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
        assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="failed") == 0
        assert outcome.registry.recent[0].resumes == 1
    else:
        assert outcome.disconnect.reason is Reason.UPSTREAM_KEEPALIVE_TIMEOUT
        assert outcome.ended_at - t0 == approx(30 + 5, abs=1e-6)
        assert len(fake.sessions) == 1 and fake.connections >= 2
        assert outcome.caller.close_code == 1011
        assert outcome.caller.close_reason == "upstream_keepalive_timeout"
        assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 0
        assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="failed") == 1


@pytest.mark.parametrize("knobs", [{"flood": 500}, {"error_at": (1.0, "bad", "recoverable")}])
async def test_provider_noise_does_not_end_the_call(
    autojump_clock: Any, knobs: dict[str, Any]
) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05, **knobs))
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    if "flood" in knobs:
        # all of it reached the caller, coalesced into fewer, larger media messages
        assert len(outcome.caller.audio_received) >= 500 * 160
        chunks = fake.sessions[0].audio_out  # every delta the fake sent: flood and echo
        assert outcome.caller.frames_received < chunks  # what was queued went out merged


async def test_a_refused_key_is_not_retried(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(refuse_status=401))
    t0 = trio.current_time()
    async with bridged(fake, Settings(), seconds=30.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_REJECTED
    assert "401" in outcome.disconnect.detail
    assert outcome.ended_at - t0 == approx(0, abs=1e-6)  # at once, not after connect_timeout
    assert fake.connections == 1
    assert (outcome.caller.close_code, outcome.caller.close_reason) == (1011, "upstream_rejected")
    assert outcome.sample("voxbridge_call_disconnects_total", reason="upstream_rejected") == 1


async def test_a_failing_recycle_keeps_the_working_session(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05))

    async def refuse_new_sessions() -> None:
        await fake.wait_for_session(1)
        fake.refuse_status = 503
        fake.only_session = None

    settings = Settings(session_max_age=2.0, idle_timeout=100)
    async with bridged(fake, settings, seconds=5.0) as outcome:
        await refuse_new_sessions()
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.sessions) == 1  # every replacement was refused; the first carried the call
    assert outcome.caller.frames_sent == fake.sessions[0].audio_in


# --- what the caller hears: validated audio, queued items, late audio, the goodbye ---------------

A, B, X, Y, BYE = 0x11, 0x22, 0x33, 0x44, 0x55  # each agent item is one mu-law byte, repeated


def item(value: int, seconds: float) -> bytes:
    return bytes([value]) * int(seconds * 8000)


def twilio_frames_are_valid(frames: list[str]) -> bool:
    """Every frame is exactly a Twilio ``media``, ``mark`` or ``clear`` message for our stream."""
    for frame in frames:
        message = json.loads(frame)
        event = message["event"]
        if event == "media":
            assert message.keys() == {"event", "streamSid", "media"}
            assert message["media"].keys() == {"payload"}
            assert binascii.a2b_base64(message["media"]["payload"], strict_mode=True)
        elif event == "mark":
            assert message.keys() == {"event", "streamSid", "mark"}
            assert message["mark"].keys() == {"name"}
        else:
            assert message == {"event": "clear", "streamSid": message["streamSid"]}
        assert isinstance(message["streamSid"], str) and message["streamSid"].startswith("MZ")
    return True


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


async def test_bad_provider_audio_is_dropped_counted_and_never_reaches_the_caller(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Two inputs real bridges have shipped: a delta that is not base64 at all, and one with bad
    # padding in the middle of a burst of good ones (it used to end the call internal_error).
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.2, item(A, 1.0), "one second")],
            corrupt_deltas={3: "QUJ"},
            events_at=[(0.1, delta("@@@@")), (0.1, {"type": 7})],  # and a malformed event
        )
    )
    with caplog.at_level(logging.DEBUG, logger="voxbridge.call"):
        async with bridged(fake, Settings(), seconds=2.0) as outcome:
            pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP  # the call went on
    bad = {"provider": "openai", "reason": "bad_audio"}
    assert outcome.sample("voxbridge_provider_frames_dropped_total", **bad) == 2
    malformed = {"provider": "openai", "reason": "malformed"}
    assert outcome.sample("voxbridge_provider_frames_dropped_total", **malformed) == 1
    # All of the turn but the one 20 ms chunk whose delta was corrupted; nothing else.
    assert bytes(outcome.caller.audio_received) == item(A, 0.98)
    assert outcome.carrier is not None and twilio_frames_are_valid(outcome.carrier.sent)
    drops = [r for r in caplog.records if r.getMessage().startswith("provider frame dropped")]
    # one warning a call per reason: bad_audio, malformed, then bad_audio again at debug
    assert [r.levelno for r in drops] == [logging.WARNING, logging.WARNING, logging.DEBUG]


async def test_two_queued_items_truncate_the_heard_one_and_the_one_behind(
    autojump_clock: Any,
) -> None:
    # The agent answers twice, back to back, five times faster than real time; the caller talks
    # 1.01 s into the first answer's playback, while the second is queued behind it.
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.2, item(A, 2.0), "first"), (0.2, item(B, 2.0), "second")],
            speech_started_at=[1.21],
        )
    )
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and caller.clears_received == 1
    session = fake.sessions[0]
    first, second = session.responses
    assert second.status == "completed"  # both answers were sent before the caller spoke
    assert caller.heard_ms(A) == approx(1010, abs=0.2)
    assert caller.heard_ms(B) == 0
    # A: heard to its last echoed mark (20 ms messages: 1000 ms); B: queued, never heard.
    assert [(t["item_id"], t["audio_end_ms"]) for t in session.truncates] == [
        (first.item_id, 1000),
        (second.item_id, 0),
    ]
    assert not [e for e in session.events_in if e["type"] == "response.cancel"]  # none running
    assert session.errors_sent == []  # the provider accepted every truncate


async def test_late_audio_of_an_interrupted_answer_is_dropped_until_a_new_one(
    autojump_clock: Any,
) -> None:
    # Ten 100 ms chunks of X, the caller speaks, three more chunks of X were already in flight;
    # then, later, a new answer Y.
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.2, item(X, 2.0), "cut off"), (1.0, item(Y, 0.5), "next")],
            chunk_ms=100,
            speech_started_at=[0.39],
            late_chunks=3,
        )
    )
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    session = fake.sessions[0]
    cut, following = session.responses
    assert following.status == "completed"
    assert cut.status == "cancelled" and cut.late_deltas == 3
    late = {"provider": "openai", "reason": "late_audio"}
    assert outcome.sample("voxbridge_provider_frames_dropped_total", **late) == 3
    assert caller.heard_ms(X) == approx(190, abs=0.2)  # up to the clear, and never again
    assert caller.heard_ms(Y) == 500  # the new answer plays in full
    # The response was still being generated: cancelled by id, then X truncated at its last
    # echoed mark (one 100 ms chunk).
    kinds = [e for e in session.events_in if e["type"].startswith(("response.", "conversation."))]
    assert kinds[-2:] == [
        {"type": "response.cancel", "response_id": cut.response_id},
        {
            "type": "conversation.item.truncate",
            "item_id": cut.item_id,
            "content_index": 0,
            "audio_end_ms": 100,
        },
    ]


class HangingUpCodec(OpenAIRealtimeCodec):
    """OpenAI's codec, for a provider whose close 1000 is the agent hanging up (as Ultravox's)."""

    def close_reason(self, code: int) -> Reason:
        return Reason.AGENT_HANGUP if code == 1000 else super().close_reason(code)


class HangingUpProvider(OpenAIProvider):
    def codec(self) -> OpenAIRealtimeCodec:
        return HangingUpCodec(instructions=self.instructions)


def goodbye(hangup_at: float) -> FakeOpenAIRealtime:
    """A 2 s goodbye sent at 0.2 s (by 0.6 s: five times real time), then the agent hangs up."""
    return FakeOpenAIRealtime(speak=[(0.2, item(BYE, 2.0), "goodbye")], close_at=(hangup_at, 1000))


@pytest.mark.parametrize(
    ("farewell_timeout", "heard_ms", "ended_at"),
    [
        (5.0, 2000, 2.2),  # the goodbye plays out, then the call ends
        (0.5, 1000, 1.2),  # bounded: 0.5 s after the hang-up, whatever is left unplayed
        (0.0, 500, 0.7),  # off: close at once, as before
    ],
)
async def test_the_goodbye_is_heard_before_the_call_ends(
    autojump_clock: Any, farewell_timeout: float, heard_ms: float, ended_at: float
) -> None:
    fake = await served(goodbye(hangup_at=0.7))
    t0 = trio.current_time()
    settings = Settings(farewell_timeout=farewell_timeout)
    async with bridged(fake, settings, provider_type=HangingUpProvider, seconds=10.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert (caller.close_code, caller.close_reason) == (1000, "agent_hangup")
    assert caller.heard_ms(BYE) == approx(heard_ms, abs=0.2)
    assert outcome.ended_at - t0 == approx(ended_at, abs=0.01)


async def test_a_caller_hanging_up_during_the_goodbye_ends_the_call_at_once(
    autojump_clock: Any,
) -> None:
    fake = await served(goodbye(hangup_at=0.7))
    t0 = trio.current_time()
    async with bridged(fake, Settings(), provider_type=HangingUpProvider, seconds=1.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.ended_at - t0 == approx(0.98, abs=0.01)  # the last frame, then stop: not 2.2 s
    assert outcome.disconnect.reason is Reason.AGENT_HANGUP  # the agent's decision stands
    assert "the caller hung up during the goodbye" in outcome.disconnect.detail
    assert outcome.sample("voxbridge_call_disconnects_total", reason="agent_hangup") == 1


BASE64ISH = st.text(alphabet=string.ascii_letters + string.digits + '+/=\n @"\\{}', max_size=24)
VALID = st.binary(min_size=1, max_size=48).map(lambda b: base64.b64encode(b).decode("ascii"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the clock is only a clock
)
@given(texts=st.lists(st.one_of(st.text(max_size=24), BASE64ISH, VALID), min_size=1, max_size=5))
async def test_arbitrary_provider_deltas_never_crash_a_call_or_break_a_carrier_frame(
    autojump_clock: Any, texts: list[str]
) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.1, item(A, 0.2), "after the noise")],
            events_at=[(0.05 + index * 0.005, delta(text)) for index, text in enumerate(texts)],
        )
    )
    async with bridged(fake, Settings(), seconds=0.5) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert outcome.carrier is not None and twilio_frames_are_valid(outcome.carrier.sent)
    valid, bad = [], 0
    for text in texts:
        try:
            valid.append(b64_decode(text))
        except ValueError:
            bad += 1
    labels = {"provider": "openai", "reason": "bad_audio"}
    assert outcome.sample("voxbridge_provider_frames_dropped_total", **labels) == bad
    # Exactly the valid audio reached the caller, in order, then the scripted answer.
    assert bytes(outcome.caller.audio_received) == b"".join(valid) + item(A, 0.2)


async def test_the_echo_after_a_barge_in_is_a_new_answer_and_plays(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.2, speech_started_at=[1.01]))
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and caller.clears_received == 1
    session = fake.sessions[0]
    assert [t["item_id"] for t in session.truncates] == ["item_echo"]
    # Every echo chunk sent after the barge-in belongs to the new item, and reached the caller.
    # The caller's frames sent from 0.82 s to 1.78 s come back (0.2 s later) after the barge-in
    # at 1.01 s, before the caller's stop at 1.98 s: 49 frames, 980 ms of the new item.
    assert session.items["item_echo_2"] == 980
    late = {"provider": "openai", "reason": "late_audio"}
    assert outcome.sample("voxbridge_provider_frames_dropped_total", **late) == 0
    assert len(caller.audio_received) == session.audio_out * FRAME_BYTES


async def test_a_long_provider_chunk_goes_out_in_slices_so_a_barge_in_stays_precise(
    autojump_clock: Any,
) -> None:
    # One 2 s delta: sent whole, the caller's 1.51 s would have been truncated at 0 (no mark
    # back yet); in 100 ms slices, each with its mark, it is truncated at 1500 ms.
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.2, item(A, 2.0), "one chunk")], chunk_ms=2000, speech_started_at=[1.71]
        )
    )
    async with bridged(fake, Settings(), seconds=2.5) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and caller.frames_received == 20  # 100 ms media messages
    assert caller.heard_ms(A) == approx(1510, abs=0.2)
    assert [t["audio_end_ms"] for t in fake.sessions[0].truncates] == [1500]


async def test_a_resumed_session_reusing_ids_is_not_silenced_by_the_old_barge_in(
    autojump_clock: Any,
) -> None:
    # The first session is barged in on (its echo item cut), then drops; the resumed session
    # names its echo item and response the same way. Its audio is new, and plays.
    fake = await served(
        FakeOpenAIRealtime(
            echo_delay=0.2, speech_started_at=[1.01], close_at=(1.5, 1011), only_session=1
        )
    )
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    assert outcome.caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    first, resumed = fake.sessions
    assert first.truncates and resumed.audio_out > 0
    late = {"provider": "openai", "reason": "late_audio"}
    assert outcome.sample("voxbridge_provider_frames_dropped_total", **late) == 0
    # Every echo chunk played, but for one the first session may have sent as it dropped.
    sent = first.audio_out + resumed.audio_out
    assert sent - 1 <= len(outcome.caller.audio_received) / FRAME_BYTES <= sent


class BuggyCodec(OpenAIRealtimeCodec):
    """A codec with a bug: it fails on the first transcript it decodes."""

    def decode(self, frame: str | bytes) -> Any:
        event = super().decode(frame)
        if isinstance(event, Transcript):
            raise KeyError("a bug in a codec")
        return event


class BuggyProvider(OpenAIProvider):
    def codec(self) -> OpenAIRealtimeCodec:
        return BuggyCodec(instructions=self.instructions)


async def test_a_bug_ends_the_call_internal_error_with_the_same_teardown(
    autojump_clock: Any,
) -> None:
    fake = await served(FakeOpenAIRealtime(caller_transcripts=[(0.5, "hello")]))
    t0 = trio.current_time()
    async with bridged(fake, Settings(), provider_type=BuggyProvider, seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.INTERNAL_ERROR
    assert isinstance(outcome.disconnect.__cause__, BaseExceptionGroup | KeyError)
    assert outcome.ended_at - t0 == approx(0.5, abs=0.01)  # at once, not at the caller's stop
    assert (outcome.caller.close_code, outcome.caller.close_reason) == (1011, "internal_error")
    assert fake.sessions[0].is_closed  # the provider socket is closed all the same
    assert outcome.sample("voxbridge_call_disconnects_total", reason="internal_error") == 1
