"""Gemini Live through a real call, in memory on the autojump clock: the Twilio carrier simulator
-> the bridge (``run_call``) -> ``GeminiProvider`` -> ``FakeGemini``. Audio both ways (resampled),
barge-in (``interrupted`` -> clear), a drop resumed with a handle and one replayed from history, a
tool call, usage metering, transcripts and the caller hanging up; ``goAway`` recycled make before
break with the handle, a failed one falling back to the resume, and the two never racing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import trio
import trio.testing
from pytest import approx
from test_call_providers import Outcome, RecordingCarrier

from voxbridge.audio import ulaw_to_pcm16
from voxbridge.errors import Reason
from voxbridge.providers.events import AgentAudio
from voxbridge.providers.gemini import GREETING_PROMPT, GeminiCodec, GeminiProvider
from voxbridge.session import run_call
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator
from voxbridge.testing.fake_gemini import RESOURCE, FakeGemini, FakeToolCall, Speech, pcm24
from voxbridge.testing.memory import accept_carrier, memory_connector
from voxbridge.tools import Tool, ToolContext
from voxbridge.upstream import StreamConnector

SILENCE = b"\xff" * 8000


class TimedCarrier(RecordingCarrier):
    """Records when the bridge sent each ``media`` message to the caller, too."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.media_at: list[float] = []

    async def send(self, frame: str) -> None:
        if '"event":"media"' in frame:
            self.media_at.append(trio.current_time())
        await super().send(frame)


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without a media message to the caller between ``start`` and ``end``."""
    inside = [t for t in times if start <= t <= end]
    assert inside, "no media message in the window"
    return max(b - a for a, b in zip([start, *inside], [*inside, end], strict=True))


def slow_after_first(
    connect_seconds: float,
) -> Callable[[trio.Nursery, FakeGemini], StreamConnector]:
    """Every connection after the first takes ``connect_seconds`` to reach the fake (a connect
    abandoned meanwhile never reaches it)."""

    def connector(nursery: trio.Nursery, fake: FakeGemini) -> StreamConnector:
        memory = memory_connector(nursery, fake)  # type: ignore[arg-type]
        connects = 0

        async def connect(host: str, port: int) -> trio.abc.Stream:
            nonlocal connects
            connects += 1
            if connects > 1:
                await trio.sleep(connect_seconds)
            return await memory(host, port)

        return connect

    return connector


@asynccontextmanager
async def bridged(
    fake: FakeGemini,
    settings: Settings,
    *,
    call_options: dict[str, Any] | None = None,
    provider_options: dict[str, Any] | None = None,
    connector: Callable[[trio.Nursery, FakeGemini], StreamConnector] | None = None,
    **caller: Any,
) -> AsyncIterator[Outcome]:
    """One call: simulator -> bridge -> fake Gemini, all in memory; the body runs alongside.
    ``outcome.carrier`` is a :class:`TimedCarrier`."""
    fake.url = f"ws://gemini.invalid{RESOURCE}"  # reached in memory; the URL only names it
    outcome = Outcome()
    with trio.fail_after(10_000):  # virtual seconds
        async with trio.open_nursery() as nursery:
            caller_end, bridge_end = trio.testing.memory_stream_pair()
            simulator = CarrierSimulator(caller_end, close_wait=500, **caller)
            done = [trio.Event(), trio.Event()]

            async def call() -> None:
                outcome.caller = await simulator.run()
                done[0].set()

            nursery.start_soon(call)
            carrier = outcome.carrier = TimedCarrier(await accept_carrier(nursery, bridge_end))
            if connector is None:
                connect_stream = memory_connector(nursery, fake)  # type: ignore[arg-type]
            else:
                connect_stream = connector(nursery, fake)
            options = {"instructions": "be brief", **(provider_options or {})}
            provider = GeminiProvider(fake.endpoint(), **options)

            async def bridge() -> None:
                outcome.disconnect = await run_call(
                    carrier,
                    provider,
                    settings=settings,
                    metrics=outcome.metrics,
                    registry=outcome.registry,
                    journal=outcome.journal,
                    connect_stream=connect_stream,
                    **(call_options or {}),
                )
                outcome.ended_at = trio.current_time()
                done[1].set()

            nursery.start_soon(bridge)
            yield outcome
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()
    assert outcome.disconnect is not None


async def test_audio_both_ways_and_the_caller_hangs_up(autojump_clock: Any) -> None:
    fake = FakeGemini(echo=True, delay=0.05)
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert outcome.caller is not None
    session = fake.sessions[0]
    assert session.setup is not None and session.setup["model"].startswith("models/")
    # 2 s of caller audio at 16 kHz reached the fake (less the resampler's 100 samples)...
    assert session.audio_bytes_in >= 2 * 32000 - 2 * 160 - 320 * 5
    # ...and came back, resampled twice, as about as much 8 kHz mu-law
    assert len(outcome.caller.audio_received) > 8000 * 1.5
    assert session.is_closed


async def test_barge_in_clears_the_caller(autojump_clock: Any) -> None:
    fake = FakeGemini(speech=[Speech(0.2, "a long answer", pcm24(2000))], interrupt_at=[1.0])
    async with bridged(fake, Settings(), seconds=2.5) as outcome:
        pass
    assert outcome.caller is not None
    assert outcome.caller.clears_received == 1
    assert outcome.sample("voxbridge_barge_ins_total") == 1
    record = outcome.registry.recent[0]
    assert ("agent", "a long answer") not in [(t.role, t.text) for t in record.transcript]


async def test_transcripts_usage_and_a_drop_resumed_with_the_handle(autojump_clock: Any) -> None:
    fake = FakeGemini(
        heard=[(0.1, "my order is 42")],
        speech=[Speech(0.3, "let me check")],
        close_at=(1.5, 1011),
        only_sessions=1,
    )
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    record = outcome.registry.recent[0]
    assert [(t.role, t.text) for t in record.transcript] == [
        ("caller", "my order is 42"),
        ("agent", "let me check"),
    ]
    assert dict(record.usage)["input_audio_tokens"] == 20
    first, second = fake.sessions
    assert first.close_code == 1011
    assert second.resumed_from == "handle-1-1" and second.client_content == []
    assert second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1


async def test_a_drop_without_a_handle_replays_the_history(autojump_clock: Any) -> None:
    fake = FakeGemini(
        heard=[(0.1, "hello")],
        speech=[Speech(0.3, "hi")],
        close_at=(1.0, 1011),
        only_sessions=1,
        resumable=False,
    )
    async with bridged(fake, Settings(), seconds=2.5) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.close_code == 1011 and second.resumed_from is None
    assert second.setup is not None
    assert second.setup["historyConfig"] == {"initialHistoryInClientContent": True}
    (content,) = second.client_content
    assert content["turns"] == [
        {"role": "user", "parts": [{"text": "hello"}]},
        {"role": "model", "parts": [{"text": "hi"}]},
    ]
    assert second.texts == []  # the agent spoke last: no nudge, no greeting


async def test_a_tool_call_is_answered(autojump_clock: Any) -> None:
    async def order(arguments: dict[str, Any], context: ToolContext) -> object:
        return {"status": f"order {arguments['order']} shipped"}

    lookup = Tool(
        "lookup",
        "Look up an order.",
        {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        order,
    )
    fake = FakeGemini(tool_calls=[FakeToolCall(0.5, "lookup", {"order": "42"})])
    async with bridged(
        fake, Settings(), call_options={"tools": [lookup]}, audio=SILENCE, seconds=2.0
    ) as outcome:
        pass
    session = fake.sessions[0]
    assert session.setup is not None
    declared = session.setup["tools"][0]["functionDeclarations"]
    assert "lookup" in [d["name"] for d in declared]
    assert session.tool_responses == [
        {"id": "fc-1-1", "name": "lookup", "response": {"status": "order 42 shipped"}}
    ]
    assert outcome.sample("voxbridge_tool_calls_total", tool="lookup", outcome="ok") == 1


async def test_a_frozen_provider_is_resumed(autojump_clock: Any) -> None:
    fake = FakeGemini(echo=True, delay=0.05, freeze_at=1.0, only_sessions=1)
    settings = Settings(keepalive_interval=1.0, pong_timeout=1.0)
    async with bridged(fake, settings, seconds=6.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.is_closed and second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1


# --- goAway: the service ends a connection after about 10 minutes, and says so first ------------


async def test_go_away_is_recycled_make_before_break_with_the_handle(autojump_clock: Any) -> None:
    # goAway at 3 s with 3 s left, while the echo plays: to the codec that is an answer in
    # flight that never ends (no turnComplete), so the bridge waits for its end until the latest,
    # RECYCLE_MARGIN (2 s) before the service's: at 4 s it opens the next session, resuming with
    # the handle the first turn left, switches to it once the service has set it up (50 ms), and
    # only then closes the first one (1000 "recycled"), before the service would have (at 6 s).
    # Nothing is counted as a drop, no caller audio is lost, and the agent's audio to the caller
    # goes on through the switch.
    fake = FakeGemini(
        echo=True,
        delay=0.05,
        speech=[Speech(0.3, "let me check")],
        go_away_at=(3.0, 3.0),
        only_sessions=1,
    )
    async with bridged(fake, Settings(), seconds=8.0) as outcome:
        # In memory the switch takes no virtual time: watch the order instead.
        first = await fake.wait_for_session(1)
        second = await fake.wait_for_session(2)
        assert not first.is_closed  # made...
        await first.wait_closed()
        assert second.setup is not None and not second.is_closed  # ...before broken
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert fake.sessions == [first, second]
    assert {"goAway": {"timeLeft": "3s"}} in first.sent
    assert second.resumed_from == "handle-1-1" and second.client_content == []  # nothing replayed
    assert second.texts == []  # no greeting, no nudge: the service restored the conversation
    assert (first.close_code, first.close_reason) == (1000, "recycled")  # by the bridge...
    assert second.opened_at == approx(first.opened_at + 4.0)  # ...not at 6 s
    assert second.setup_complete_at == first.closed_at == approx(second.opened_at + 0.05)
    # every frame the caller sent reached one of the two sessions: none dropped at the switch
    record = outcome.registry.recent[0]
    assert first.audio_in + second.audio_in == record.frames_from_caller > 350
    assert outcome.sample("voxbridge_media_frames_dropped_total", direction="to_upstream") == 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="failed") == 0
    assert record.resumes == 0
    # The echo goes on. Before the switch the caller is sent a media message every 20 ms; the
    # switch costs what the old session still had in flight when it was closed (the fake's 50 ms
    # echo delay) and the new session's resamplers filling (3 frames, 60 ms, at 8 -> 16 -> 24 ->
    # 8 kHz), and nothing more: the new session was ready before the old one was closed.
    assert isinstance(outcome.carrier, TimedCarrier)
    media_at, switch = outcome.carrier.media_at, first.closed_at
    assert longest_gap(media_at, switch - 2.0, switch) == approx(0.02)
    assert longest_gap(media_at, switch, switch + 2.0) <= 0.05 + 0.06 + 0.02 + 0.01
    assert longest_gap(media_at, switch + 0.2, switch + 2.0) == approx(0.02)
    assert second.audio_out > 0


async def test_a_go_away_whose_recycle_fails_falls_back_to_the_resume(autojump_clock: Any) -> None:
    # The service refuses new connections (503) from 1 s to 9 s: the recycle the goAway at 2 s
    # starts at once (the agent is not answering) keeps failing until its time is up
    # (max(reconnect_budget, 1 s) = 5 s), and the old session carries the call until the service
    # closes it at 2 + 10 s; that drop is resumed as any other, with the handle.
    fake = FakeGemini(
        speech=[Speech(0.3, "let me check")],
        go_away_at=(2.0, 10.0),
        only_sessions=1,
    )
    connects: list[float] = []

    def counting(nursery: trio.Nursery, fake: FakeGemini) -> StreamConnector:
        memory = memory_connector(nursery, fake)  # type: ignore[arg-type]

        async def connect(host: str, port: int) -> trio.abc.Stream:
            connects.append(trio.current_time())
            return await memory(host, port)

        return connect

    async with bridged(fake, Settings(), connector=counting, seconds=20.0) as outcome:
        t0 = trio.current_time()
        await trio.sleep(1.0)
        fake.refuse_status = 503
        await trio.sleep(8.0)
        fake.refuse_status = None
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions  # the refused attempts never became sessions
    recycle_attempts = [t - t0 for t in connects if t0 + 2.0 <= t < t0 + 9.0]
    assert len(recycle_attempts) > 2  # retried with backoff...
    assert recycle_attempts[0] == approx(2.0, abs=0.05) and recycle_attempts[-1] <= 7.0  # ...in 5 s
    assert (first.close_code, first.close_reason) == (1000, "session time limit reached")
    assert first.closed_at == approx(t0 + 12.0, abs=0.05)  # the old session carried the call
    assert first.closed_at <= second.opened_at < first.closed_at + 0.5  # then: resumed
    assert second.resumed_from == "handle-1-1" and second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="failed") == 0


async def test_a_session_closed_before_its_recycle_switched_is_replaced_once(
    autojump_clock: Any,
) -> None:
    # goAway at 2 s with 1 s left, and every new connection takes 2 s: the service closes the
    # session (at 3 s) before the recycle's new session is even connected. The resume takes over
    # and the recycle is abandoned before its connection reached the service: one new session
    # (at 3 + 2 s), not the recycle's at 4 s as well.
    fake = FakeGemini(
        echo=True,
        delay=0.05,
        speech=[Speech(0.3, "let me check")],
        go_away_at=(2.0, 1.0),
        only_sessions=1,
    )
    async with bridged(fake, Settings(), connector=slow_after_first(2.0), seconds=10.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions  # and no third
    assert first.close_code == 1000 and first.closed_at == approx(first.opened_at + 3.0, abs=0.05)
    assert second.opened_at == approx(first.closed_at + 2.0, abs=0.05)
    assert second.resumed_from == "handle-1-1" and second.audio_in > 0
    assert all(session.is_closed for session in fake.sessions)
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1


async def test_an_answer_in_flight_at_go_away_is_heard_whole(autojump_clock: Any) -> None:
    # A 2 s answer from 1.5 s, and goAway at 2 s with 5 s left: the recycle waits for the turn to
    # end (turnComplete at 3.5 s), so the caller hears every millisecond of the answer, then the
    # next session (resumed with the handle the answer left) takes over. It used to recycle at
    # once: the first session was closed mid-answer and the caller heard about 1.5 s of it.
    fake = FakeGemini(
        speech=[Speech(1.5, "a long answer", pcm24(2000))],
        go_away_at=(2.0, 5.0),
        only_sessions=1,
    )
    async with bridged(fake, Settings(), audio=SILENCE, seconds=6.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    # what the first session said, decoded as the bridge does: all of it reached the caller
    said = GeminiCodec()
    answer = b"".join(
        event.audio
        for event in (said.decode(json.dumps(message)) for message in first.sent)
        if isinstance(event, AgentAudio)
    )
    assert len(answer) == approx(2000 * 8, abs=8)  # 2 s of 8 kHz mu-law, give or take a sample
    # soxr's int16 stream is not bit-for-bit repeatable from run to run (a last-bit difference
    # here and there), so the bridge's copy and this re-decoding agree in length and within a
    # few steps of 16-bit PCM per sample, not byte for byte.
    heard = bytes(outcome.caller.audio_received)
    assert len(heard) == len(answer)
    ours = np.frombuffer(ulaw_to_pcm16(heard), dtype="<i2").astype(np.int32)
    theirs = np.frombuffer(ulaw_to_pcm16(answer), dtype="<i2").astype(np.int32)
    assert int(np.abs(ours - theirs).max()) <= 512  # one mu-law step at full scale at most
    turn_complete = first.opened_at + 1.5 + 2.0
    assert second.opened_at == approx(turn_complete, abs=0.05)  # at the turn boundary...
    assert (first.close_code, first.close_reason) == (1000, "recycled")  # ...not at 7 s
    assert second.resumed_from == "handle-1-1" and second.client_content == []
    record = outcome.registry.recent[0]
    assert [(t.role, t.text) for t in record.transcript] == [("agent", "a long answer")]
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 0


async def test_a_silent_session_is_recycled_at_once(autojump_clock: Any) -> None:
    fake = FakeGemini(go_away_at=(2.0, 30.0), only_sessions=1)
    async with bridged(fake, Settings(), audio=SILENCE, seconds=4.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert second.opened_at == approx(first.opened_at + 2.0)
    assert (first.close_code, first.close_reason) == (1000, "recycled")
    assert first.audio_in + second.audio_in == outcome.registry.recent[0].frames_from_caller


# --- the session is the call's once the service acknowledged it; the greeting is said once ---


async def test_no_caller_audio_reaches_a_session_before_setup_complete(autojump_clock: Any) -> None:
    # setupComplete comes 0.5 s after setup: the caller's first 0.5 s waits for it (the opening
    # backlog), and then goes, in order; nothing reaches the service before it, nothing is lost
    fake = FakeGemini(setup_delay=0.5)
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    [session] = fake.sessions
    assert session.setup_complete_at == approx(session.opened_at + 0.5)
    assert session.before_setup_complete == [] and session.errors == []
    record = outcome.registry.recent[0]
    assert session.audio_in == record.frames_from_caller == 100  # 2 s of 20 ms frames
    assert outcome.sample("voxbridge_media_frames_dropped_total", direction="to_upstream") == 0


async def test_a_session_that_never_completes_its_setup_is_not_used(autojump_clock: Any) -> None:
    # the service takes 20 s to answer setup: longer than connect_timeout (2 s) every time
    fake = FakeGemini(setup_delay=20.0)
    settings = Settings(connect_timeout=2.0)
    async with bridged(fake, settings, seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_CONNECT_FAILED
    assert "did not acknowledge the session within connect_timeout=2s" in outcome.disconnect.detail
    assert all(s.before_setup_complete == [] and s.audio_in == 0 for s in fake.sessions)


async def test_a_drop_before_the_greeting_ended_does_not_greet_again(autojump_clock: Any) -> None:
    fake = FakeGemini(close_at=(0.08, 1011), only_sessions=1)
    options = {"greeting": "Hi there"}
    async with bridged(fake, Settings(), provider_options=options, seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.texts == [GREETING_PROMPT + "Hi there"]
    assert second.texts == [] and second.client_content == []  # no greeting, nothing to replay


def test_two_calls_on_one_provider_never_share_a_resumption_handle() -> None:
    """Each call configures its own copy of the provider, so the resumption handle one call's
    session learns is never offered by another call's resume (even for the default agent, with
    no tools, where 0.1 used the shared provider as is)."""
    from voxbridge.metrics import Metrics
    from voxbridge.session.call import Call

    shared = GeminiProvider(FakeGemini().endpoint(), instructions="be brief")
    calls = []
    for _ in range(2):
        socket = trio.testing.memory_stream_pair()[0]
        call = Call(socket, shared, settings=Settings(), metrics=Metrics())  # type: ignore[arg-type]
        call._set_up_agent()
        calls.append(call.provider)
    first, second = calls
    assert isinstance(first, GeminiProvider) and isinstance(second, GeminiProvider)
    first.resumption.handle = "handle-of-call-1"
    assert second.resumption.handle is None
    assert shared.resumption.handle is None
