"""Sparse marks (``--marks sparse``) in a whole call, in memory on the autojump clock: which marks
the call sends for a burst, where a barge-in truncates when the caller's carrier has playout
latency (and jitter), the goodbye wait, and a carrier without marks.

The provider is ``FakeOpenAIRealtime``; the caller is the Twilio carrier simulator, with its
``playout_latency``, ``jitter`` and ``seed`` knobs where a test says so. Each agent item is one
constant mu-law byte, and ``CallResult.heard_ms_at`` is what the caller had heard at an instant.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
import trio
from pytest import approx
from test_call_carriers import NoMarks, Rest, TimedCarrier, timed_call
from test_call_providers import BYE, A, HangingUpProvider, bridged, item, served

from voxbridge.errors import Reason
from voxbridge.session.playback import SPARSE_MARK_MS
from voxbridge.settings import Settings
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, FakeToolCall, speech

SILENCE = b"\xff" * 8000
MS = 8  # mu-law bytes per millisecond


def media_and_marks(carrier: TimedCarrier) -> tuple[list[int], list[int]]:
    """From the frames the call sent the caller: the milliseconds of each media message, and the
    media messages (1-based) a mark follows."""
    sizes, after = [], []
    for _, frame in carrier.times:
        event = json.loads(frame)
        if event["event"] == "media":
            sizes.append(len(base64.b64decode(event["media"]["payload"])) // MS)
        elif event["event"] == "mark":
            after.append(len(sizes))
    return sizes, after


def sparse_rule(answers: list[list[int]]) -> list[int]:
    """Where sparse mode puts marks, for answers (the milliseconds of their media messages) that
    each begin a stretch and end a burst: after an answer's first message, after each message
    that completes ``SPARSE_MARK_MS`` since the last mark, and after its last message."""
    after, number = [], 0
    for answer in answers:
        unmarked = 0
        for index, ms in enumerate(answer):
            number += 1
            unmarked += ms
            if index == 0 or index == len(answer) - 1 or unmarked >= SPARSE_MARK_MS:
                after.append(number)
                unmarked = 0
    return after


@pytest.mark.parametrize("marks", ["exact", "sparse"])
async def test_the_marks_sent_for_a_burst(autojump_clock: Any, marks: str) -> None:
    # 1.2 s in 20 ms deltas all at once (media messages of up to 100 ms)
    fake = await served(
        FakeOpenAIRealtime(speak=[(0.5, item(A, 1.2), "an answer")], speak_pace=math.inf)
    )
    _outcome, caller, carrier = await timed_call(fake, Settings(marks=marks), seconds=3.0)
    sizes, after = media_and_marks(carrier)
    assert sum(sizes) == 1200 and max(sizes) <= 100  # (how it merges is _coalesce's business)
    if marks == "exact":
        assert after == list(range(1, len(sizes) + 1))
    else:
        assert after == sparse_rule([sizes])
        assert len(after) <= 4  # the first message, 500 ms later twice at most, the end
    assert caller.marks_echoed == len(after)
    assert caller.heard_ms(A) == 1200


async def test_a_second_answer_after_a_silence_begins_a_new_stretch(autojump_clock: Any) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.5, item(A, 0.3), "one"), (2.0, item(A, 0.3), "two")], speak_pace=math.inf
        )
    )
    _outcome, _caller, carrier = await timed_call(fake, Settings(marks="sparse"), seconds=3.0)
    sizes, after = media_and_marks(carrier)
    start = carrier.times[0][0]  # the first answer goes out at 0.5 s, the second at 2.0 s
    first = sum(1 for at, frame in carrier.times if at < start + 1.0 and '"media"' in str(frame))
    answers = [sizes[:first], sizes[first:]]
    assert [sum(answer) for answer in answers] == [300, 300]
    assert after == sparse_rule(answers)
    assert len(after) == 4  # each answer: its first message, its last


@pytest.mark.parametrize(
    ("marks", "truncated"),
    [
        # the caller heard 1130 ms: the last echo (20 ms messages) had it at 1120
        ("exact", 1120),
        # the model, its latency learned from the echo of the first message: to the millisecond
        ("sparse", 1130),
    ],
)
async def test_a_barge_in_truncates_where_the_caller_is_despite_playout_latency(
    autojump_clock: Any, marks: str, truncated: int
) -> None:
    # 3 s sent from 0.5 s, five times faster than real time, in 20 ms deltas; the carrier plays
    # audio 80 ms after it gets it, so the caller is 1130 ms in when it talks at 1.71 s.
    fake = await served(
        FakeOpenAIRealtime(speak=[(0.5, item(A, 3.0), "a long answer")], speech_started_at=[1.71])
    )
    t0 = trio.current_time()
    async with bridged(fake, Settings(marks=marks), seconds=3.0, playout_latency=0.08) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and caller.clears_received == 1
    assert caller.heard_ms_at(t0 + 1.71) == approx(1130)
    [truncate] = fake.sessions[0].truncates
    assert truncate["audio_end_ms"] == truncated
    assert caller.heard_ms(A) == approx(1130)  # the clear went out at once: nothing more played


@pytest.mark.parametrize("seed", range(5))
async def test_with_jitter_sparse_is_off_by_no_more_than_the_echo_delay(
    autojump_clock: Any, seed: int
) -> None:
    # The same answer, the carrier 80 ms behind and each message and echo up to 20 ms late:
    # the model is re-anchored by echoes that came back up to 20 ms late, so it may be that far
    # behind; exact mode is behind by that and up to a 20 ms message more.
    heard: dict[str, float] = {}
    truncated: dict[str, int] = {}
    for marks in ("exact", "sparse"):
        fake = await served(
            FakeOpenAIRealtime(speak=[(0.5, item(A, 3.0), "long")], speech_started_at=[1.71])
        )
        t0 = trio.current_time()
        async with bridged(
            fake,
            Settings(marks=marks),
            seconds=3.0,
            playout_latency=0.08,
            jitter=0.02,
            seed=seed,
        ) as outcome:
            pass
        assert outcome.caller is not None
        heard[marks] = outcome.caller.heard_ms_at(t0 + 1.71)
        [truncate] = fake.sessions[0].truncates
        truncated[marks] = truncate["audio_end_ms"]
    assert heard["exact"] == approx(heard["sparse"], abs=1e-6)  # the same true playout
    assert 0 <= heard["sparse"] - truncated["sparse"] <= 20 + 1
    assert 0 <= heard["exact"] - truncated["exact"] <= 40 + 1


@pytest.mark.parametrize("marks", ["exact", "sparse"])
async def test_the_goodbye_wait_ends_at_the_echo_of_the_burst_end(
    autojump_clock: Any, marks: str
) -> None:
    goodbye = speech("Goodbye! " * 100)  # 1.8 s
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Bye.")],
            tool_calls=[FakeToolCall("end_call", {}, say=goodbye)],
        )
    )
    rest = Rest()
    outcome, caller, carrier = await timed_call(
        fake,
        Settings(marks=marks),
        call_options={"carrier_rest": rest},
        audio=SILENCE,
        seconds=30.0,
    )
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert caller.first_received_at is not None
    [(_, asked_at)] = rest.completed
    assert asked_at == approx(caller.first_received_at + len(goodbye) / (MS * 1000), abs=1e-6)
    assert goodbye in bytes(caller.played)
    media, sent_marks = carrier.events().count("media"), carrier.events().count("mark")
    assert sent_marks == media if marks == "exact" else sent_marks < media / 3


def raw_delta(audio: bytes) -> dict[str, Any]:
    """A ``response.output_audio.delta`` outside any scripted turn (no events follow it)."""
    return {
        "type": "response.output_audio.delta",
        "response_id": "resp_raw",
        "item_id": "item_raw",
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode("ascii"),
    }


async def test_a_goodbye_whose_end_owes_its_mark_gets_it_when_the_agent_hangs_up(
    autojump_clock: Any,
) -> None:
    # 300 ms in 20 ms deltas at 0.5 s, and nothing after them but the provider's close (1000:
    # the agent hangs up) at 0.6 s. The end of the burst is known only then: the call sends the
    # mark its last audio owes before it waits for the goodbye to be heard.
    fake = await served(
        FakeOpenAIRealtime(
            events_at=[(0.5, raw_delta(bytes([BYE]) * 160))] * 15, close_at=(0.6, 1000)
        )
    )
    t0 = trio.current_time()
    outcome, caller, carrier = await timed_call(
        fake,
        Settings(marks="sparse"),
        provider_type=HangingUpProvider,
        seconds=10.0,
        playout_latency=0.1,
    )
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.AGENT_HANGUP
    sizes, after = media_and_marks(carrier)
    assert sum(sizes) == 300
    assert after == [1, len(sizes)]  # the first message's, and the one owed by the last
    last_mark_at = [at for at, frame in carrier.times if '"mark"' in str(frame)][-1]
    assert last_mark_at - t0 == approx(0.6)  # when the provider closed, not before
    assert all(at - t0 < 0.51 for at, frame in carrier.times if '"media"' in str(frame))
    assert caller.heard_ms(BYE) == 300  # heard in full: the wait ended at the echo, at 0.9 s
    assert outcome.ended_at - t0 == approx(0.9, abs=0.01)


async def test_without_marks_the_sparse_setting_sends_no_mark(autojump_clock: Any) -> None:
    from voxbridge.audio import tone

    fake = await served(
        FakeOpenAIRealtime(speak=[(0.5, tone(3.0, 300), "a long answer")], speech_started_at=[1.7])
    )
    _outcome, caller, carrier = await timed_call(
        fake, Settings(marks="sparse"), call_options={"codec": NoMarks()}, seconds=4.0
    )
    assert set(carrier.events()) == {"media", "clear"}  # no mark frame: NoMarks would fail
    assert caller.marks_received == 0
    heard = caller.heard_ms_at_clear[0]
    assert heard == approx(1200, abs=1)  # the estimate, to the millisecond, as without it
    [truncate] = fake.sessions[0].truncates
    assert truncate["audio_end_ms"] == approx(heard, abs=1)
