"""The call from a carrier's capabilities, in memory on the autojump clock: what it does when a
carrier does not echo the marks a ``clear`` discarded (Plivo), has no marks at all (Vonage), or
cannot transfer.

The wire is Twilio's (the Twilio carrier simulator plays agent audio in real time and echoes marks
as Twilio does); what changes is the codec's ``capabilities``, which is all the call reads. Plivo's
"no echo for a cleared checkpoint" is made real by a socket wrapper that drops those echoes before
the call sees them; a carrier without marks is given no mark frames (its codec fails the call if
asked for one), so the simulator echoes nothing.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import trio
from pytest import approx
from test_call_providers import Outcome, RecordingCarrier, bridged, served

from voxbridge.agents import AgentConfig
from voxbridge.audio import tone
from voxbridge.carriers.base import Capabilities
from voxbridge.carriers.twilio import TwilioStream
from voxbridge.errors import Reason
from voxbridge.session import CarrierSocket
from voxbridge.settings import Settings
from voxbridge.testing.carrier import CallResult
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, FakeToolCall, speech

SILENCE = b"\xff" * 8000
MS = 8  # mu-law bytes per millisecond


class NoClearedEchoes(TwilioStream):
    """A carrier that does not echo the marks a ``clear`` discarded (Plivo's capabilities)."""

    capabilities = Capabilities(echoes_cleared_marks=False, sends_stop=False)


class NoMarks(TwilioStream):
    """A carrier without marks (Vonage's capabilities): the call must never ask for one."""

    capabilities = Capabilities(marks=False, echoes_cleared_marks=False, sends_stop=False)

    def mark(self, name: str) -> str:
        raise AssertionError("a mark frame built for a carrier without marks")


class HoldsBack(TwilioStream):
    """A carrier codec with a minimum chunk (as Vonage's whole frames): ``audio`` sends nothing
    until 250 ms of audio is ready, then all of it in one frame."""

    MIN_BYTES = 250 * MS

    def __init__(self) -> None:
        super().__init__()
        self.pending = bytearray()
        self.bytes_out = self.frames_out = 0

    def audio(self, mulaw: bytes) -> str:
        self.pending += mulaw
        if len(self.pending) < self.MIN_BYTES:
            return ""  # held back: the call must neither send nor mark nor count it
        frame = super().audio(bytes(self.pending))
        self.bytes_out += len(self.pending)
        self.frames_out += 1
        self.pending.clear()
        return frame

    def clear(self) -> str:
        self.pending.clear()
        return super().clear()


class TimedCarrier(RecordingCarrier):
    """Records when the bridge sent each frame. With ``drop_cleared_echoes``, the echoes of the
    marks a ``clear`` discarded never reach the call (Plivo sends none)."""

    def __init__(self, inner: CarrierSocket, *, drop_cleared_echoes: bool = False) -> None:
        super().__init__(inner)
        self.times: list[tuple[float, str | bytes]] = []
        self.drop_cleared_echoes = drop_cleared_echoes
        self.unechoed: set[str] = set()
        self.cleared: set[str] = set()
        self.dropped: list[str] = []

    async def send(self, frame: str | bytes) -> None:
        self.times.append((trio.current_time(), frame))
        event = json.loads(frame)
        if event["event"] == "mark":
            self.unechoed.add(event["mark"]["name"])
        elif event["event"] == "clear":
            self.cleared |= self.unechoed
            self.unechoed.clear()
        await super().send(frame)

    async def receive(self) -> str | bytes:
        while True:
            frame = await super().receive()
            event = json.loads(frame)
            if event["event"] == "mark":
                name = event["mark"]["name"]
                self.unechoed.discard(name)
                if self.drop_cleared_echoes and name in self.cleared:
                    self.dropped.append(name)
                    continue
            return frame

    def events(self) -> list[str]:
        return [json.loads(frame)["event"] for _, frame in self.times]


async def timed_call(
    fake: FakeOpenAIRealtime, settings: Settings, **options: Any
) -> tuple[Outcome, CallResult, TimedCarrier]:
    """One whole call through :func:`bridged` with a :class:`TimedCarrier` (``options`` as
    ``bridged``'s): its outcome, what the caller got, and the carrier's timed frames."""
    async with bridged(fake, settings, carrier_type=TimedCarrier, **options) as outcome:
        pass
    caller, carrier = outcome.caller, outcome.carrier
    assert caller is not None and isinstance(carrier, TimedCarrier)
    return outcome, caller, carrier


class Rest:
    """A carrier REST API that answers at once (a ``CarrierRest``)."""

    def __init__(self, *, can_transfer: bool = True) -> None:
        self.can_transfer = can_transfer
        self.completed: list[tuple[str, float]] = []

    async def complete(self, call_id: str) -> None:
        self.completed.append((call_id, trio.current_time()))

    async def transfer(self, call_id: str, target: str) -> None:
        raise AssertionError("no transfer here")


# --- a clear settles its marks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "drop"),
    [(TwilioStream, False), (NoClearedEchoes, True)],
    ids=["twilio-echoes-cleared-marks", "plivo-no-echo"],
)
async def test_a_barge_in_during_the_goodbye_ends_the_wait_at_the_clear(
    autojump_clock: Any, codec: type[TwilioStream], drop: bool
) -> None:
    # end_call's goodbye (4.3 s of audio) is interrupted at 2 s: nothing of it is left to play,
    # so the call hangs up then, not when farewell_timeout (5 s) gives up on echoes that either
    # count for nothing (Twilio: a cleared mark's echo) or never come (Plivo).
    goodbye = speech("Goodbye, and thank you for calling. " * 60)
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Bye.")],
            tool_calls=[FakeToolCall("end_call", {}, say=goodbye)],
            speech_started_at=[2.0],
        )
    )
    rest = Rest()
    async with bridged(
        fake,
        Settings(),
        call_options={"carrier_rest": rest, "codec": codec()},
        carrier_type=partial(TimedCarrier, drop_cleared_echoes=drop),
        audio=SILENCE,
        seconds=30.0,
    ) as outcome:
        pass
    caller, carrier = outcome.caller, outcome.carrier
    assert caller is not None and isinstance(carrier, TimedCarrier)
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert caller.clears_received == 1
    [(call_id, asked_at)] = rest.completed
    assert call_id == caller.call_sid
    assert asked_at == caller.clears_at[0]  # hung up at the clear, not farewell_timeout later
    assert caller.heard_ms() < len(goodbye) / MS  # the caller cut the goodbye short


async def test_without_echoes_of_cleared_marks_later_marks_still_confirm_exactly(
    autojump_clock: Any,
) -> None:
    # Plivo: an answer is interrupted (its cleared checkpoints are never echoed), then the agent
    # says goodbye: the barge-in truncates at the last echo, and the goodbye wait ends at the echo
    # of the goodbye's own last mark, untouched by the marks the clear discarded.
    answer, goodbye = b"\x11" * (2000 * MS), speech("Goodbye! " * 50)  # 2 s, then 0.9 s
    fake = await served(
        FakeOpenAIRealtime(
            speak=[(0.5, answer, "a long answer")],
            speech_started_at=[1.7],
            caller_transcripts=[(3.0, "Bye.")],
            tool_calls=[FakeToolCall("end_call", {}, say=goodbye)],
        )
    )
    rest = Rest()
    async with bridged(
        fake,
        Settings(),
        call_options={"carrier_rest": rest, "codec": NoClearedEchoes()},
        carrier_type=partial(TimedCarrier, drop_cleared_echoes=True),
        audio=SILENCE,
        seconds=30.0,
    ) as outcome:
        pass
    caller, carrier = outcome.caller, outcome.carrier
    assert caller is not None and isinstance(carrier, TimedCarrier)
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert carrier.dropped  # the cleared marks' echoes never reached the call, as with Plivo
    [truncate] = fake.sessions[0].truncates
    heard = caller.heard_ms_at_clear[0]
    assert heard == approx(1200, abs=1)
    assert heard - 100 <= truncate["audio_end_ms"] <= heard  # one media message, never past
    clear_at = caller.clears_at[0]
    goodbye_at = min(at for at, frame in carrier.times if at > clear_at and "media" in frame)
    [(_, asked_at)] = rest.completed
    assert asked_at == approx(goodbye_at + len(goodbye) / (MS * 1000), abs=1e-6)
    assert goodbye in bytes(caller.played)


# --- without marks: the playout estimate --------------------------------------------------------


@pytest.mark.parametrize("codec", [TwilioStream, NoMarks], ids=["marks", "no-marks"])
async def test_the_goodbye_wait_ends_when_the_goodbye_has_played(
    autojump_clock: Any, codec: type[TwilioStream]
) -> None:
    # With marks, the echo of the last one says the goodbye played; without, the estimate says
    # so at the same instant: real-time playout from when its first byte was sent.
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
        Settings(),
        call_options={"carrier_rest": rest, "codec": codec()},
        audio=SILENCE,
        seconds=30.0,
    )
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert bytes(caller.audio_received) == goodbye  # the only agent audio of the call
    assert caller.first_received_at is not None
    [(_, asked_at)] = rest.completed
    assert asked_at == approx(caller.first_received_at + len(goodbye) / (MS * 1000), abs=1e-6)
    assert goodbye in bytes(caller.played)  # heard in full before the hang-up
    if codec is NoMarks:
        assert set(carrier.events()) == {"media"}  # no mark frame ever
        assert caller.marks_received == 0
    else:
        assert carrier.events().count("mark") == carrier.events().count("media")


async def test_without_marks_a_barge_in_truncates_at_the_estimated_position(
    autojump_clock: Any,
) -> None:
    fake = await served(
        FakeOpenAIRealtime(speak=[(0.5, tone(3.0, 300), "a long answer")], speech_started_at=[1.7])
    )
    outcome, caller, carrier = await timed_call(
        fake, Settings(), call_options={"codec": NoMarks()}, seconds=4.0
    )
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert caller.clears_received == 1 and caller.marks_received == 0
    assert set(carrier.events()) == {"media", "clear"}
    # The agent spoke from 0.5 s, five times faster than real time; the caller barged in at 1.7 s
    # and had heard 1.2 s. The estimate says the same, to the millisecond (with marks: within one
    # media message).
    heard = caller.heard_ms_at_clear[0]
    assert heard == approx(1200, abs=1)
    [truncate] = fake.sessions[0].truncates
    assert truncate["audio_end_ms"] == approx(heard, abs=1)
    assert outcome.sample("voxbridge_barge_ins_total") == 1


# --- the REST hooks ----------------------------------------------------------------------------


@pytest.mark.parametrize("can_transfer", [True, False])
async def test_transfer_call_is_offered_only_when_the_carrier_can_transfer(
    autojump_clock: Any, can_transfer: bool
) -> None:
    fake = await served(FakeOpenAIRealtime())
    options = {
        "carrier_rest": Rest(can_transfer=can_transfer),
        "agent": AgentConfig(transfer_to="+15551230000"),
    }
    async with bridged(fake, Settings(), call_options=options, seconds=1.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    [update] = fake.sessions[0].session_updates
    offered = [tool["name"] for tool in update["session"]["tools"]]
    assert offered == (["end_call", "transfer_call"] if can_transfer else ["end_call"])


# --- audio a codec holds back ------------------------------------------------------------------


async def test_audio_the_codec_holds_back_is_neither_marked_nor_counted_until_it_goes_out(
    autojump_clock: Any,
) -> None:
    # The answer (2 s) goes to the codec at most 100 ms at a time; the codec sends at least
    # 250 ms at a time and holds what is left at the end for ever. A mark follows only audio that went out (an early mark
    # would be echoed before its audio played), and the counts are what the caller got.
    answer = b"\x11" * (2000 * MS)
    fake = await served(FakeOpenAIRealtime(speak=[(0.5, answer, "a long answer")]))
    codec = HoldsBack()
    outcome, caller, carrier = await timed_call(
        fake, Settings(), call_options={"codec": codec}, audio=SILENCE, seconds=4.0
    )
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    events = carrier.events()
    media = events.count("media")
    assert codec.bytes_out + len(codec.pending) == len(answer) and codec.pending
    assert bytes(caller.audio_received) == answer[: codec.bytes_out]
    assert media == codec.frames_out >= 6
    assert all(events[i - 1] == "media" for i, event in enumerate(events) if event == "mark")
    assert 1 <= events.count("mark") <= media
    assert caller.marks_received == events.count("mark")
    assert outcome.sample("voxbridge_media_frames_total", direction="to_caller") == media
    [record] = outcome.journal.records
    assert (record.frames_to_caller, record.bytes_to_caller) == (media, codec.bytes_out)
