"""Network faults between the caller and the server, through a ``FaultProxy`` on the carrier leg.

``test_e2e_endings`` has the caller itself end the call (stop, close, FIN, RST at a frame boundary,
silence with the socket still read). Here the network misbehaves instead, so the caller cannot
help: latency and one-byte writes the call must survive; a blackhole that swallows the server's
close frame too; a window that closes while the agent talks (the caller streaming on, or silent);
a connection cut in the middle of a WebSocket frame; a RST into a write that is already blocked.
"""

from __future__ import annotations

import pytest
import trio
from faultkit import (
    MARGIN,
    PATIENT,
    Rig,
    assert_clean_end,
    echo_fake,
    fault_call,
    wait_for,
    within,
)

from voxbridge.errors import Reason
from voxbridge.testing.proxy import Side

LATENCY = 0.15  # seconds each way
FLOOD = 40_000  # 20 ms deltas at once: 800 s of agent audio, far more than the socket buffers hold


async def test_latency_each_way_the_call_survives_and_audio_round_trips() -> None:
    async with fault_call(carrier_proxy={"latency": LATENCY}, seconds=1.5, **PATIENT) as trial:
        outcome = await trial.ended()
    record = assert_clean_end(outcome, Reason.CALLER_STOP)
    caller, result = trial.caller, trial.caller.result
    assert result.close_code == 1000 and result.close_reason == "caller_stop"
    assert caller.echoed_verbatim()
    assert result.round_trip is not None and result.round_trip >= 2 * LATENCY
    assert result.marks_echoed > 0
    # stop left right after the last frame and reached the server one latency later
    assert result.last_sent_at is not None
    assert within(outcome.decided_at - result.last_sent_at, LATENCY, LATENCY + MARGIN)
    assert record.frames_from_caller == 75 and record.resumes == 0


async def test_one_byte_writes_the_call_survives_and_audio_round_trips() -> None:
    # What the server parses arrives one byte per write: every WebSocket header and frame split.
    # Only that way, and only half a second of audio: a proxy in this process making thousands
    # of writes a second falls behind real time on a loaded box (the caller then waits for its
    # close longer), and the test would be about the proxy.
    options = {"carrier_proxy": {}, "prepare": slice_up_to_one_byte, **PATIENT}
    async with fault_call(seconds=0.5, close_wait=15.0, **options) as trial:
        outcome = await trial.ended()
    assert trial.rig.carrier_proxy is not None
    (conn,) = trial.rig.carrier_proxy.connections
    assert conn.writes_up == conn.bytes_up  # one byte each
    record = assert_clean_end(outcome, Reason.CALLER_STOP)
    assert trial.caller.result.close_reason == "caller_stop"
    assert trial.caller.echoed_verbatim()
    assert trial.caller.result.marks_echoed > 0
    assert record.frames_from_caller == 25


def slice_up_to_one_byte(rig: Rig) -> None:
    assert rig.carrier_proxy is not None
    rig.carrier_proxy.slice_to(1, "up")


async def test_blackhole_swallows_the_close_too_idle_timeout_and_a_bounded_close() -> None:
    async with fault_call(carrier_proxy={}) as trial:
        await trio.sleep(0.3)
        assert trial.rig.carrier_proxy is not None
        trial.rig.carrier_proxy.blackhole()
        blackholed_at = trio.current_time()
        outcome = await trial.ended(caller_too=False)  # it waits for a close that never comes
    settings = trial.rig.settings
    record = assert_clean_end(outcome, Reason.IDLE_TIMEOUT)
    assert record.last_caller_frame_at is not None
    # The idle deadline counts from the last frame that got through (one the proxy was writing
    # when the blackhole fell may still arrive): the call ends idle_timeout after the blackhole.
    silence = outcome.decided_at - record.last_caller_frame_at
    assert within(silence, settings.idle_timeout, settings.idle_timeout + MARGIN)
    assert within(outcome.decided_at - blackholed_at, 0, settings.idle_timeout + MARGIN)
    # Our close frame vanished as well: the carrier close waited close_timeout for a reply.
    closing = record.ended_at - outcome.decided_after
    assert within(closing, settings.close_timeout, settings.close_timeout + MARGIN)
    assert trial.caller.result.close_code in (None, 1006)  # the caller never saw a close frame
    session = trial.rig.fake.sessions[0]
    assert session.is_closed and session.close_code == 1000


class Progress:
    """The call's sends to the caller, timed: ``(start, end)`` each, ``end`` None while in flight.

    Timed in the call itself (its carrier socket's ``send``, wrapped), not by polling: a write
    that blocked and was cut off returns as if sent (hypercorn reports nothing to the app), and
    a send after it to the closed connection returns at once, so only each send's own times say
    which one blocked and since when.
    """

    def __init__(self, rig: Rig) -> None:
        carrier = rig.call()._carrier
        inner = carrier.send
        self.sends: list[list[float | None]] = []

        async def timed(frame: str | bytes) -> None:
            times: list[float | None] = [trio.current_time(), None]
            self.sends.append(times)
            try:
                await inner(frame)
            finally:
                times[1] = trio.current_time()

        carrier.send = timed  # type: ignore[method-assign]

    def blocked(self, until: float) -> tuple[float, float]:
        """The send that took longest (up to ``until`` if still in flight): (start, seconds)."""
        spans = [(start, (end if end is not None else until) - start) for start, end in self.sends]
        assert spans, "the call sent nothing to the caller"
        return max(spans, key=lambda span: span[1])  # type: ignore[arg-type,return-value]

    async def wait_blocked(self, quiet: float) -> None:
        """Until a send has been in flight for ``quiet`` seconds (a write is blocked)."""
        while not (
            self.sends
            and self.sends[-1][1] is None
            and trio.current_time() - self.sends[-1][0] >= quiet  # type: ignore[operator]
        ):
            await trio.sleep(0.01)


async def window_closes(rig: Rig, side: Side) -> Progress:
    """Once the caller's start is through, the proxy stops reading ``side`` (``"target"``: what
    the server sends, a zero window at the caller; ``"both"``: the caller's frames too)."""
    assert rig.carrier_proxy is not None
    conn = await rig.carrier_proxy.wait_for_connection()
    state = rig.call().state
    await wait_for(lambda: state.started_at is not None)  # the caller's start is through
    # Timed from before the window closes: the agent floods faster than real time, so a write
    # may already be blocked on a caller that reads slower than the flood.
    progress = Progress(rig)
    conn.stop_reading(side)
    return progress


@pytest.mark.parametrize(
    "keeps_sending", [True, False], ids=["keeps_sending", "silent_after_start"]
)
async def test_a_caller_that_never_reads_ends_send_timeout_after_the_blocked_write(
    keeps_sending: bool,
) -> None:
    # A zero window at the caller while the agent talks. Streaming on, the caller keeps the idle
    # deadline moving; silent, it would trip idle_timeout (made long here: the write decides).
    async with fault_call(echo_fake(flood=FLOOD), carrier_proxy={}, idle_timeout=5.0) as trial:
        progress = await window_closes(trial.rig, "target" if keeps_sending else "both")
        outcome = await trial.ended(caller_too=False)
    settings = trial.rig.settings
    assert_clean_end(outcome, {Reason.CALLER_STALLED, Reason.CALLER_CLOSED})
    # The end came no sooner than send_timeout after the blocked send began (the call's own
    # deadline and the server's write bound both count from then), and no later than MARGIN
    # past it; when it was decided is known between two looks, and each bound takes the side
    # of that window that cannot fail for a late look.
    began, took = progress.blocked(until=outcome.decided_at)
    assert took >= settings.send_timeout - MARGIN, (began, took)  # it did block, this long
    longest = outcome.decided_at - began
    shortest = outcome.decided_after - began
    assert longest >= settings.send_timeout and shortest <= settings.send_timeout + MARGIN, (
        (shortest, longest),
        outcome.reason,
        (began, took, outcome.decided_after, outcome.decided_at),
    )
    assert trial.rig.fake.sessions[0].is_closed


async def test_a_reset_into_a_blocked_write_ends_the_call_at_once() -> None:
    # hypercorn writes to the carrier in a shielded scope (bounded by send_timeout in voxbridge's
    # containment); a RST must wake that write now, not when its deadline comes.
    async with fault_call(echo_fake(flood=FLOOD), carrier_proxy={}, send_timeout=3.0) as trial:
        progress = await window_closes(trial.rig, "target")
        await progress.wait_blocked(0.3)
        assert trial.rig.carrier_proxy is not None
        trial.rig.carrier_proxy.reset()
        reset_at = trio.current_time()
        outcome = await trial.ended(caller_too=False)
    assert_clean_end(outcome, {Reason.CALLER_CLOSED, Reason.CALLER_STALLED})
    assert within(outcome.decided_at - reset_at, 0, MARGIN), "waited for send_timeout"
    assert trial.rig.fake.sessions[0].is_closed


async def test_connection_cut_in_the_middle_of_a_frame_caller_closed() -> None:
    async with fault_call(carrier_proxy={}) as trial:
        await trio.sleep(0.3)
        assert trial.rig.carrier_proxy is not None
        (conn,) = trial.rig.carrier_proxy.connections
        conn.close_after(100, "up")  # a media frame is ~330 bytes: this cuts one in two
        await conn.wait_closed()
        cut_at = trio.current_time()
        outcome = await trial.ended()
    assert conn.close_reason is not None and conn.close_reason.startswith("close_after")
    record = assert_clean_end(outcome, Reason.CALLER_CLOSED)
    assert within(outcome.decided_at - cut_at, 0, MARGIN)
    assert record.resumes == 0
    session = trial.rig.fake.sessions[0]
    assert session.is_closed and session.close_code == 1000
    assert trial.caller.result.close_code in (None, 1006)  # no close frame: the wire was cut
