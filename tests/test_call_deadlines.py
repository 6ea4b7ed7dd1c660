"""Every way a call ends, to the virtual microsecond: reason, time, both sockets, metrics.

All calls run in memory on the autojump clock (see ``callkit``). Times are seconds after the carrier
socket was accepted (``rig.t0``). Where a peer cannot complete the close handshake, teardown waits
``close_timeout`` (2 s) for it: "decided" is when the reason was decided (the bridge's first close
frame), "returned" is when ``run_call`` returned.

A deadline the call's tasks re-arm per frame (``idle_timeout``, ``send_timeout``) fires from the
instant it is due to ``LATENESS`` (50 ms) after it, never before (docs/timeouts.md, "How precise a
deadline is"): such a decision is asserted with :func:`on_time`, and what follows it exactly,
relative to when it really fell.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from callkit import (
    ACCOUNT_SID,
    CALL_SID,
    ENDPOINT,
    STREAM_SID,
    Rig,
    Tap,
    approx,
    connected_frame,
    media_frame,
    rig,
    start_frame,
)

from voxbridge.carriers.twilio_wire import encode_dtmf, encode_stop
from voxbridge.deadlines import LATENESS, Deadline
from voxbridge.errors import Disconnect, Reason
from voxbridge.session import call as call_module
from voxbridge.session import run_call
from voxbridge.session.call import FLOOD_BURST_MS
from voxbridge.session.watchdog import Watchdog, deadline
from voxbridge.settings import Settings
from voxbridge.testing import FakeEchoAgent
from voxbridge.upstream import StreamConnector

CLOSE_TIMEOUT = Settings().close_timeout  # 2 s: a close handshake that cannot complete
#: The provider dropping ends the call at once (the resume path has its own tests).
NO_RESUME = Settings(reconnect_budget=0)


def elapsed(t0: float) -> float:
    return trio.current_time() - t0


class on_time:
    """Equal to a time from ``due`` to ``LATENESS`` after it: when a re-armed deadline fires."""

    def __init__(self, due: float) -> None:
        self.due = due

    def __eq__(self, other: object) -> bool:
        late = self.due + LATENESS
        return isinstance(other, float | int) and self.due - 1e-6 <= other <= late + 1e-6

    def __repr__(self) -> str:
        return f"on_time({self.due:g})"


def stop_frame(sequence_number: int) -> str:
    return encode_stop(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number)


# --- idle_timeout ---------------------------------------------------------------------------------


async def test_idle_timeout_default_ends_60s_after_the_last_frame(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=3, stall_after=1.0)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    assert r.rel(r.sim.result.last_sent_at) == approx(0.98)
    assert returned == approx(0.98 + 60)
    # the provider socket: the bridge sent a normal close and the agent saw it, right then
    assert r.upstream.close_frames == [(approx(r.t0 + 60.98), 1000, "idle_timeout")]
    assert r.rel(r.upstream.closed_at) == approx(60.98)
    assert r.rel(r.session.closed_at) == approx(60.98)
    assert r.session.close_code == 1000
    # the carrier
    assert r.carrier_close == (1000, "idle_timeout", approx(60.98))
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)
    record = r.registry.recent[0]
    assert record.silence == approx(60)
    assert record.frames_from_caller == r.sim.result.frames_sent == 50


@pytest.mark.parametrize(
    ("script", "expected_end"),
    [
        # media at 4, 8, 12: each frame moves the 5 s deadline; the call outlives 5 s by far
        ([(0, start_frame()), (4, media_frame(0)), (8, media_frame(1)), (12, media_frame(2))], 17),
        # any frame counts as heard, not only media (dtmf at 16)
        (
            [
                (0, start_frame()),
                (4, media_frame(0)),
                (8, media_frame(1)),
                (12, media_frame(2)),
                (16, encode_dtmf(STREAM_SID, "5", 5)),
            ],
            21,
        ),
        # no frame after start: 5 s after start (start arrived at 2, not at accept)
        ([(2, start_frame())], 7),
    ],
    ids=["media-moves-it", "dtmf-moves-it", "start-only"],
)
async def test_idle_timeout_custom_moves_with_each_frame(autojump_clock, script, expected_end):
    async with rig(Settings(idle_timeout=5)) as r:
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    assert returned == on_time(expected_end)
    assert r.upstream.close_frames == [(approx(r.t0 + returned), 1000, "idle_timeout")]
    assert r.rel(r.session.closed_at) == approx(returned)
    assert r.session.close_code == 1000
    assert r.carrier_close == (1000, "idle_timeout", approx(returned))
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)


async def test_idle_timeout_custom_with_streaming_caller(autojump_clock):
    async with rig(Settings(idle_timeout=5)) as r:
        await r.accept_sim(seconds=20, stall_after=3.0)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    assert r.rel(r.sim.result.last_sent_at) == approx(2.98)
    assert returned == on_time(7.98)
    assert r.rel(r.session.closed_at) == approx(returned)
    assert r.carrier_close == (1000, "idle_timeout", approx(returned))
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)
    assert r.registry.recent[0].frames_from_caller == 150
    assert r.sim.result.frames_received > 0  # the echo flowed while the caller talked


async def test_idle_timeout_is_not_charged_for_a_slow_upstream_connect(autojump_clock):
    """A caller that talks without pause must never end with idle_timeout.

    The provider takes 7 s to connect (within connect_timeout=10); the caller streams a frame every
    second from start on. The frames queue in the carrier socket while the bridge connects; they are
    heard as soon as the bridge starts reading. The caller is silent after its frame at 12 s, so
    the call ends with idle_timeout at 12 + 5 = 17. (Today it ends at 7, the moment the tasks
    start, blamed on upstream_stalled: see the Watchdog re-arm test below.)
    """
    settings = Settings(idle_timeout=5, connect_timeout=10)
    script = [(0, start_frame())] + [(1 + i, media_frame(i)) for i in range(12)]
    async with rig(settings) as r:
        await r.accept_script(script)
        inner = r.connector()

        async def slow_connect(host: str, port: int) -> trio.abc.Stream:
            await trio.sleep(7)
            return await inner(host, port)

        disconnect = await r.run(slow_connect)
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT, disconnect
    assert returned == on_time(17)
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)


# --- start_timeout --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [[], [(0, connected_frame())], [(4, connected_frame())], [(9.999, connected_frame())]],
    ids=["silent", "connected-at-once", "connected-at-4s", "connected-at-9.999s"],
)
async def test_start_timeout_counts_from_accept(autojump_clock, script):
    async with rig() as r:
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.START_TIMEOUT
    assert returned == approx(10)
    assert r.connects == 0
    assert r.agent.sessions == []
    assert r.carrier_tap.close_frames == [(approx(r.t0 + 10), 1000, "start_timeout")]
    assert r.carrier_close == (1000, "start_timeout", approx(10))
    r.assert_accounted_once(Reason.START_TIMEOUT)
    record = r.registry.recent[0]
    assert record.upstream_opened is False
    assert record.call_sid is None


# --- max_duration ---------------------------------------------------------------------------------


async def test_max_duration_ends_a_talking_call_exactly(autojump_clock):
    # a frame every 0.25 s from 0.1 s on, for 40 s: never idle, never stops by itself
    script = [(0, start_frame())] + [(0.1 + 0.25 * i, media_frame(i)) for i in range(160)]
    async with rig(Settings(max_call_duration=30, idle_timeout=1000)) as r:
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.MAX_DURATION
    assert returned == approx(30)
    assert r.upstream.close_frames == [(approx(r.t0 + 30), 1000, "max_duration")]
    assert r.rel(r.session.closed_at) == approx(30)
    assert r.session.close_code == 1000
    assert r.carrier_close == (1000, "max_duration", approx(30))
    r.assert_accounted_once(Reason.MAX_DURATION)
    assert r.registry.recent[0].frames_from_caller == 120  # 0.1 .. 29.85; none after 30
    assert r.session.audio_in == 120
    assert r.upstream.pings == [approx(r.t0 + 20)]  # the keepalive ran meanwhile


# --- upstream_keepalive_timeout -------------------------------------------------------------------

#: A ping every 20 s, each given 10 s for its pong; the caller's silence never ends these calls.
KEEPALIVE = {"keepalive_interval": 20, "pong_timeout": 10, "idle_timeout": 1000}


def freeze_provider(r: Rig, frozen: str, at: float) -> None:
    """From ``at`` on, the first provider session answers no ping: the agent stops reading it, or
    the bridge hears nothing from it (the agent itself is fine)."""
    if frozen == "agent-stops-reading":
        r.at(at, lambda: r.agent.sessions[0].stream.stop_reading())
    else:
        r.at(at, lambda: r.upstream_taps[0].stop_reading())


def first_then_refusing(r: Rig) -> StreamConnector:
    """The first connection reaches the echo agent; every later one is refused at once."""
    healthy, refusing = r.connector(), r.refusing_connector()

    async def connect(host: str, port: int) -> trio.abc.Stream:
        return await (healthy if r.connects == 0 else refusing)(host, port)

    return connect


def talking_script(seconds: int) -> list[tuple[float, str]]:
    """``start`` at 0, a media frame at 0.5, 1.5, ... (never at a whole second), ``stop`` at
    ``seconds``: no frame arrives at the instant a provider deadline fires."""
    media = [(0.5 + i, media_frame(i)) for i in range(seconds)]
    return [(0, start_frame()), *media, (seconds, stop_frame(seconds + 2))]


def reconnects(r: Rig, outcome: str) -> float | None:
    return r.metrics.registry.get_sample_value(
        "voxbridge_upstream_reconnects_total", {"outcome": outcome}
    )


def frames_dropped(r: Rig) -> float | None:
    return r.metrics.registry.get_sample_value(
        "voxbridge_media_frames_dropped_total", {"direction": "to_upstream"}
    )


@pytest.mark.parametrize(
    ("freeze_at", "decided", "pongs"),
    [(5, 30, 0), (25, 50, 1)],  # first ping after the freeze is at 20 (resp. 40); + pong_timeout
)
@pytest.mark.parametrize("frozen", ["agent-stops-reading", "bridge-hears-nothing"])
async def test_upstream_keepalive_timeout(autojump_clock, freeze_at, decided, pongs, frozen):
    """No resume (reconnect_budget=0): no pong ends the call at once. A session known dead is
    aborted: no close frame is written to it, its stream is closed at the decision instant, and
    teardown waits for nothing on the provider side."""
    settings = Settings(reconnect_budget=0, **KEEPALIVE)
    async with rig(settings) as r:
        await r.accept_sim(seconds=100, stall_after=1.0)
        freeze_provider(r, frozen, freeze_at)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_KEEPALIVE_TIMEOUT
    assert r.upstream.pings == [approx(r.t0 + 20 * (i + 1)) for i in range(pongs + 1)]
    assert r.upstream.close_frames == []
    assert r.rel(r.upstream.closed_at) == approx(decided)
    assert returned == approx(decided)
    if frozen == "bridge-hears-nothing":  # the agent itself is fine: it saw the TCP close at once
        assert r.rel(r.session.closed_at) == approx(decided)
        assert r.session.close_code == 1006
    assert r.carrier_tap.close_frames == [
        (approx(r.t0 + decided), 1011, "upstream_keepalive_timeout")
    ]
    assert r.carrier_close == (1011, "upstream_keepalive_timeout", approx(decided))
    r.assert_accounted_once(Reason.UPSTREAM_KEEPALIVE_TIMEOUT)
    assert r.connects == 1
    get = r.metrics.registry.get_sample_value
    assert get("voxbridge_upstream_ping_rtt_seconds_count") == pongs
    assert (reconnects(r, "resumed"), reconnects(r, "failed")) == (0, 0)


@pytest.mark.parametrize("frozen", ["agent-stops-reading", "bridge-hears-nothing"])
async def test_upstream_keepalive_timeout_is_resumed(autojump_clock, frozen):
    """The ping of 20 gets no pong: at 30 the session is aborted and a new one opens at once; the
    caller's audio goes to it, its echo comes back, it answers the ping that ends its probation
    (35), and the call ends when the caller hangs up."""
    async with rig(Settings(**KEEPALIVE)) as r:
        await r.accept_script(talking_script(60))
        freeze_provider(r, frozen, 5)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(60)
    dead, resumed = r.upstream_taps
    first, second = r.agent.sessions
    # the frozen session: aborted at 30, no close frame
    assert dead.pings == [approx(r.t0 + 20)]
    assert dead.close_frames == []
    assert r.rel(dead.closed_at) == approx(30)
    # the new one: opened at 30, set up, pinged at the end of its probation and 20 s later
    assert r.rel(second.opened_at) == approx(30)
    assert len(second.session_updates) == 1
    assert resumed.pings == [approx(r.t0 + 35), approx(r.t0 + 55)]  # probation's end, + 20
    assert resumed.close_frames == [(approx(r.t0 + 60), 1000, "caller_stop")]
    assert r.rel(second.closed_at) == approx(60)
    assert second.close_code == 1000
    # audio: 0.5 .. 29.5 was sent to the first session (a frozen agent read only up to 5), 30.5 ..
    # 59.5 to the second; nothing was dropped (no frame arrived while resuming)
    assert first.audio_in == (5 if frozen == "agent-stops-reading" else 30)
    assert second.audio_in == 30
    assert frames_dropped(r) == 0
    assert r.carrier_close == (1000, "caller_stop", approx(60))
    r.assert_accounted_once(Reason.CALLER_STOP)
    record = r.registry.recent[0]
    assert record.frames_from_caller == 60
    assert record.frames_to_caller == 5 + 30  # echoes heard before the freeze, then all of them
    assert record.resumes == 1
    assert (reconnects(r, "resumed"), reconnects(r, "failed")) == (1, 0)
    get = r.metrics.registry.get_sample_value
    assert get("voxbridge_upstream_ping_rtt_seconds_count") == 2  # the new session's pongs


@pytest.mark.parametrize("frozen", ["agent-stops-reading", "bridge-hears-nothing"])
async def test_upstream_keepalive_timeout_resume_fails(autojump_clock, frozen):
    """The session is aborted at 30 and every new connection is refused: the call ends when
    reconnect_budget (5 s) is spent, with the reason of the drop that started it."""
    async with rig(Settings(**KEEPALIVE)) as r:
        await r.accept_script(talking_script(60))
        freeze_provider(r, frozen, 5)
        disconnect = await r.run(first_then_refusing(r))
        returned = r.now()
    decided = 30 + 5  # the drop + reconnect_budget
    assert disconnect.reason is Reason.UPSTREAM_KEEPALIVE_TIMEOUT
    assert "resuming failed" in disconnect.detail
    assert returned == approx(decided)
    assert r.connects >= 2  # refused ones leave no socket
    assert r.upstream.close_frames == []
    assert r.rel(r.upstream.closed_at) == approx(30)
    assert r.carrier_tap.close_frames == [
        (approx(r.t0 + decided), 1011, "upstream_keepalive_timeout")
    ]
    assert r.carrier_close == (1011, "upstream_keepalive_timeout", approx(decided))
    r.assert_accounted_once(Reason.UPSTREAM_KEEPALIVE_TIMEOUT)
    assert r.registry.recent[0].frames_from_caller == 30  # 0.5 .. 29.5
    assert frames_dropped(r) == 5  # 30.5 .. 34.5, while resuming
    assert (reconnects(r, "resumed"), reconnects(r, "failed")) == (0, 1)


# --- upstream_stalled -----------------------------------------------------------------------------


async def test_upstream_stalled(autojump_clock):
    """No resume (reconnect_budget=0): a send to the provider that does not finish within
    send_timeout ends the call at once, and the socket is aborted (its close frame could not
    leave anyway): no close frame, stream closed at the decision instant."""
    async with rig(NO_RESUME) as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.upstream.stop_writing())
        disconnect = await r.run()
        returned = r.now()
    decided = r.rel(r.upstream.closed_at)
    assert decided == on_time(1.02 + 5)  # the first frame after 1.005, + send_timeout
    assert disconnect.reason is Reason.UPSTREAM_STALLED
    assert r.rel(r.upstream.first_blocked_write_at) == approx(1.02)
    assert r.upstream.close_frames == []
    assert returned == approx(decided)
    assert r.rel(r.session.closed_at) == approx(decided)
    assert r.session.close_code == 1006  # the agent saw the TCP close, no close frame
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1011, "upstream_stalled")]
    assert r.carrier_close == (1011, "upstream_stalled", approx(decided))
    r.assert_accounted_once(Reason.UPSTREAM_STALLED)
    assert r.registry.recent[0].frames_from_caller == r.session.audio_in == 51  # 0 .. 1.00


async def test_upstream_stalled_is_resumed(autojump_clock):
    """The stalled session is aborted at 6.02 and a new one opens at once; the caller's audio goes
    to it and the call ends when the caller hangs up. Every frame is accounted for: sent to one of
    the sessions, or dropped (the one whose send stalled, and what came while resuming)."""
    async with rig() as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.upstream_taps[0].stop_writing())
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(19.98)
    stalled, resumed = r.upstream_taps
    first, second = r.agent.sessions
    assert r.rel(stalled.first_blocked_write_at) == approx(1.02)
    assert stalled.close_frames == []
    decided = r.rel(stalled.closed_at)
    assert decided == on_time(1.02 + 5)
    assert r.rel(first.closed_at) == approx(decided)
    assert first.close_code == 1006
    assert r.rel(second.opened_at) == approx(decided)
    assert len(second.session_updates) == 1
    assert resumed.close_frames == [(approx(r.t0 + 19.98), 1000, "caller_stop")]
    assert r.rel(second.closed_at) == approx(19.98)
    assert second.close_code == 1000
    assert r.carrier_close == (1000, "caller_stop", approx(19.98))
    r.assert_accounted_once(Reason.CALLER_STOP)
    record = r.registry.recent[0]
    assert first.audio_in == 51
    assert second.audio_in > 0  # audio flowed again
    assert record.frames_from_caller == first.audio_in + second.audio_in
    assert record.frames_from_caller + frames_dropped(r) == r.sim.result.frames_sent == 1000
    assert second.audio_out > 0 and r.sim.result.frames_received > 51  # and its echo came back
    assert record.resumes == 1
    assert (reconnects(r, "resumed"), reconnects(r, "failed")) == (1, 0)


async def test_upstream_stalled_resume_fails(autojump_clock):
    """The stalled session is aborted at 6.02 and every new connection is refused: the call ends
    when reconnect_budget (5 s) is spent, with the reason of the drop that started it."""
    async with rig() as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.upstream_taps[0].stop_writing())
        disconnect = await r.run(first_then_refusing(r))
        returned = r.now()
    dropped_at = r.rel(r.upstream.closed_at)
    assert dropped_at == on_time(1.02 + 5)
    decided = dropped_at + 5  # + reconnect_budget
    assert disconnect.reason is Reason.UPSTREAM_STALLED
    assert "resuming failed" in disconnect.detail
    assert returned == approx(decided)
    assert r.connects >= 2
    assert r.upstream.close_frames == []
    assert r.rel(r.session.closed_at) == approx(dropped_at)
    assert r.session.close_code == 1006
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1011, "upstream_stalled")]
    assert r.carrier_close == (1011, "upstream_stalled", approx(decided))
    r.assert_accounted_once(Reason.UPSTREAM_STALLED)
    assert r.registry.recent[0].frames_from_caller == r.session.audio_in == 51
    assert (reconnects(r, "resumed"), reconnects(r, "failed")) == (0, 1)


class Gated(Tap):
    """``send_all`` parks while gated; ``release`` writes the data, then lets the send return
    without another checkpoint (as a socket write that became possible does)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.gated = False
        self.parked: tuple[bytes, trio.Event] | None = None
        self.parked_at = 0.0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.gated:
            released = trio.Event()
            self.parked = (bytes(data), released)
            self.parked_at = trio.current_time()
            await released.wait()
            return
        await super().send_all(data)

    async def release(self) -> None:
        assert self.parked is not None
        self.gated = False
        (data, released), self.parked = self.parked, None
        await self.inner.send_all(data)
        released.set()


async def test_a_provider_send_that_completes_at_its_deadline_does_not_end_the_call(
    autojump_clock: trio.testing.MockClock,
):
    """A provider write that becomes possible in the loop iteration where its send_timeout expires
    (trio wakes I/O, then expires deadlines, then runs the batch) lets the send return normally
    inside a scope already cancelled; the next checkpoint then raises ``UpstreamTimeout`` with no
    send in flight. That is a send that finished in time, not a stall: the call goes on (it ended
    ``internal_error`` on an assertion). The parked write is released 1 us before the deadline and
    the clock moved 2 us, the way a real write that becomes possible at the deadline lands."""
    settings = Settings(idle_timeout=1000)
    async with rig(settings) as r:
        await r.accept_sim(seconds=20)
        plain = r.connector()
        streams: list[Gated] = []

        async def connect(host: str, port: int) -> trio.abc.Stream:
            tap = await plain(host, port)
            assert isinstance(tap, Tap)
            streams.append(Gated(tap.inner))
            return streams[-1]

        async def provider_slow_for_exactly_send_timeout() -> None:
            await trio.sleep_until(r.t0 + 1.005)
            gated = streams[0]
            gated.gated = True
            while gated.parked is None:
                await trio.sleep(0.001)
            await trio.sleep_until(gated.parked_at + settings.send_timeout - 1e-6)
            await gated.release()  # the write goes through: the send task is runnable...
            autojump_clock.jump(2e-6)  # ...when the loop next expires deadlines

        r.nursery.start_soon(provider_slow_for_exactly_send_timeout)
        disconnect = await r.run(connect)
    assert disconnect.reason is not Reason.INTERNAL_ERROR, repr(disconnect.__cause__)
    assert disconnect.reason is Reason.CALLER_STOP


@pytest.mark.parametrize(("budget", "decided", "attempts"), [(5, 10, 2), (0, 5, 1)])
async def test_opening_frames_never_read_fail_the_connect(
    autojump_clock, budget, decided, attempts
):
    """The handshake request goes out, nothing after it: session.update blocks at once. A session
    never set up is a failed attempt, not a stall: each attempt is given send_timeout (5 s) and
    aborted (no close frame), and they are retried within connect_timeout (10 s) unless
    reconnect_budget is 0."""
    async with rig(Settings(reconnect_budget=budget)) as r:
        await r.accept_sim(seconds=20)
        disconnect = await r.run(r.connector(writes_before_stall=1))
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_CONNECT_FAILED
    assert "the opening frames were not read" in disconnect.detail
    assert f"({attempts} attempts)" in disconnect.detail
    assert returned == approx(decided)
    assert r.connects == len(r.upstream_taps) == len(r.agent.sessions) == attempts
    # the first attempt blocks at 0 and is aborted at 5; the second starts after a jittered
    # backoff of 50-100 ms and is aborted when connect_timeout runs out, at 10
    assert r.rel(r.upstream_taps[0].first_blocked_write_at) == approx(0)
    for tap, session, aborted in zip(r.upstream_taps, r.agent.sessions, [5, 10], strict=False):
        assert tap.close_frames == []
        assert r.rel(tap.closed_at) == approx(aborted)
        assert session.session_updates == []
        assert r.rel(session.closed_at) == approx(aborted)
        assert session.close_code == 1006
    if attempts == 2:
        assert 5.05 <= r.rel(r.upstream_taps[1].first_blocked_write_at) <= 5.1
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1011, "upstream_connect_failed")]
    assert r.carrier_close == (1011, "upstream_connect_failed", approx(decided))
    r.assert_accounted_once(Reason.UPSTREAM_CONNECT_FAILED)
    record = r.registry.recent[0]
    assert record.upstream_opened is False
    assert record.frames_from_caller == 0


# --- caller_stalled -------------------------------------------------------------------------------


async def test_caller_stalled(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.carrier_tap.stop_writing())
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STALLED
    # the first echo after 1.005 is that of the frame sent at 0.92 (agent delay 0.1)
    assert r.rel(r.carrier_tap.first_blocked_write_at) == approx(1.02)
    # the send's deadline is re-armed, the one the send before it left kept (LATENESS)
    decided = r.rel(r.carrier_tap.first_close_at)
    assert decided == on_time(1.02 + 5)
    # the provider is fine: it is closed first, at once, normally
    assert r.upstream.close_frames == [(approx(r.t0 + decided), 1000, "caller_stalled")]
    assert r.rel(r.session.closed_at) == approx(decided)
    assert r.session.close_code == 1000
    # the carrier's close frame is sent (1011) but cannot leave; the stream is closed after 2 s
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1011, "caller_stalled")]
    assert r.rel(r.carrier_tap.closed_at) == approx(decided + CLOSE_TIMEOUT)
    assert returned == approx(decided + CLOSE_TIMEOUT)
    assert r.carrier_close == (1006, None, approx(decided + CLOSE_TIMEOUT))  # no close frame
    r.assert_accounted_once(Reason.CALLER_STALLED)


# --- upstream_connect_failed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connector", "budget", "decided"),
    [
        ("hanging", 5, 3 + 10),
        ("silent", 5, 3 + 10),
        ("refusing", 5, 3 + 10),
        ("refusing", 0, 3),
    ],
    ids=["tcp-hangs", "handshake-unanswered", "refused-retried", "refused-no-retry"],
)
async def test_upstream_connect_failed(autojump_clock, connector, budget, decided):
    # start arrives at 3: the connect deadline counts from there. A refused connect is retried
    # with backoff until connect_timeout, unless reconnect_budget is 0.
    script = [(3, start_frame())] + [(3 + 0.5 * i, media_frame(i)) for i in range(1, 30)]
    async with rig(Settings(reconnect_budget=budget)) as r:
        await r.accept_script(script)
        disconnect = await r.run(getattr(r, f"{connector}_connector")())
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_CONNECT_FAILED
    assert returned == approx(decided)
    if connector == "refusing" and budget:
        assert 4 <= r.connects <= 16  # backoff from 0.1 s doubling to 2 s, jittered, within 10 s
    else:
        assert r.connects == 1
    assert r.agent.sessions == []
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1011, "upstream_connect_failed")]
    assert r.carrier_close == (1011, "upstream_connect_failed", approx(decided))
    r.assert_accounted_once(Reason.UPSTREAM_CONNECT_FAILED)
    assert r.registry.recent[0].upstream_opened is False
    if connector == "silent":
        # TCP was open when the handshake timed out: the bridge must close what it opened
        assert r.rel(r.upstream.closed_at) == approx(decided)


# --- natural ends ---------------------------------------------------------------------------------


async def test_caller_stop(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=2)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(1.98)  # stop follows the 100th frame at once
    assert r.upstream.close_frames == [(approx(r.t0 + 1.98), 1000, "caller_stop")]
    assert r.rel(r.session.closed_at) == approx(1.98)
    assert r.session.close_code == 1000
    assert r.carrier_close == (1000, "caller_stop", approx(1.98))
    r.assert_accounted_once(Reason.CALLER_STOP)
    assert r.registry.recent[0].frames_from_caller == 100


async def test_caller_closed(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=3, vanish_after=1.0)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_CLOSED
    assert returned == approx(0.98)  # the simulator vanishes right after its 50th frame
    assert r.upstream.close_frames == [(approx(r.t0 + 0.98), 1000, "caller_closed")]
    assert r.rel(r.session.closed_at) == approx(0.98)
    assert r.session.close_code == 1000
    assert r.carrier_tap.close_frames == []  # nobody left to send a close frame to
    assert r.sim.result.close_code == 1006  # the simulator's own abort, nothing from the bridge
    r.assert_accounted_once(Reason.CALLER_CLOSED)


@pytest.mark.parametrize("hangup_code", [1011, 1000])
async def test_upstream_closed_by_agent(autojump_clock, hangup_code):
    agent = FakeEchoAgent(delay=0.1, hangup_after=2.0, hangup_code=hangup_code)
    async with rig(NO_RESUME, agent=agent) as r:
        await r.accept_sim(seconds=10)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_CLOSED
    assert str(hangup_code) in disconnect.detail
    assert returned == approx(2.0)
    assert r.rel(r.session.opened_at) == approx(0)
    assert r.rel(r.session.closed_at) == approx(2.0)
    assert r.carrier_close == (1011, "upstream_closed", approx(2.0))
    r.assert_accounted_once(Reason.UPSTREAM_CLOSED)


@pytest.mark.parametrize("how", ["agent-hangs-up", "agent-vanishes"])
async def test_upstream_socket_is_closed_when_the_provider_leaves(autojump_clock, how):
    """The bridge opened the provider's TCP stream; it must close it, however the provider left."""
    agent = FakeEchoAgent(delay=0.1, hangup_after=2.0 if how == "agent-hangs-up" else None)
    async with rig(NO_RESUME, agent=agent) as r:
        await r.accept_sim(seconds=10)
        if how == "agent-vanishes":
            r.when(2.0, lambda: r.session.stream.vanish())
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_CLOSED
    assert returned == approx(2.0)
    assert r.carrier_close == (1011, "upstream_closed", approx(2.0))
    r.assert_accounted_once(Reason.UPSTREAM_CLOSED)
    assert r.upstream.closed_at is not None, "the bridge never closed its provider stream"
    assert r.rel(r.upstream.closed_at) == approx(2.0)


# --- protocol_error -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "decided", "upstream"),
    [
        ([(1, "{not json")], 1, False),
        ([(1, media_frame(0))], 1, False),
        ([(0.5, connected_frame()), (1, connected_frame())], 1, False),
        ([(0, start_frame()), (1, media_frame(0)), (2, "[]")], 2, True),
        ([(0, start_frame()), (1, media_frame(0)), (2, start_frame())], 2, True),
    ],
    ids=[
        "malformed-json-first",
        "media-before-start",
        "connected-twice",
        "malformed-mid-call",
        "second-start",
    ],
)
async def test_protocol_error(autojump_clock, script, decided, upstream):
    async with rig() as r:
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.PROTOCOL_ERROR
    assert returned == approx(decided)
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1008, "protocol_error")]
    assert r.carrier_close == (1008, "protocol_error", approx(decided))
    r.assert_accounted_once(Reason.PROTOCOL_ERROR)
    if upstream:
        assert r.rel(r.session.closed_at) == approx(decided)
        assert r.session.close_code == 1000
    else:
        assert r.connects == 0
        assert r.agent.sessions == []


# --- first reason wins ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_call_duration", "reason", "decided"),
    [
        (4.99, Reason.MAX_DURATION, 4.99),
        # Same instant: the call scope is the outermost cancelled scope, so it catches the
        # Cancelled and the idle watchdog never converts it: max_duration, and only it.
        (5.0, Reason.MAX_DURATION, 5.0),
        (5.01, Reason.IDLE_TIMEOUT, 5.0),
    ],
)
async def test_first_deadline_wins(autojump_clock, max_call_duration, reason, decided):
    settings = Settings(idle_timeout=5, max_call_duration=max_call_duration)
    async with rig(settings) as r:
        await r.accept_script([(0, start_frame())])
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is reason
    assert returned == approx(decided)
    assert r.carrier_close == (reason.close_code, reason.value, approx(decided))
    assert r.upstream.close_frames == [(approx(r.t0 + decided), 1000, reason.value)]
    r.assert_accounted_once(reason)


async def test_first_end_wins_over_a_later_end_in_the_same_instant(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=20)
        call = r.call()

        def end_twice() -> None:
            call.end(Reason.AGENT_HANGUP, "first")
            call.end(Reason.SERVER_SHUTDOWN, "second")

        r.at(3, end_twice)
        disconnect = await call.run()
        returned = r.now()
    assert disconnect.reason is Reason.AGENT_HANGUP
    assert disconnect.detail == "first"
    assert call.disconnect is disconnect
    assert returned == approx(3)
    assert r.carrier_close == (1000, "agent_hangup", approx(3))
    r.assert_accounted_once(Reason.AGENT_HANGUP)


@pytest.mark.parametrize(
    ("ending", "late", "returned_at"),
    [
        # upstream_stalled (no resume) is decided at 6.02 (+ up to LATENESS); the dead provider
        # socket is aborted then, and the carrier, which stopped reading at 2, cannot answer the
        # close: teardown waits for it for close_timeout -- or until it vanishes at 7
        ("upstream-stalled", "carrier-vanishes", 7.0),
        ("upstream-stalled", "end-called", None),
        # idle_timeout is decided at 5.98 (+ up to LATENESS); neither the agent nor the carrier
        # reads since 2, so both close handshakes wait, side by side, for close_timeout -- one of
        # them may end at 7
        ("idle-timeout", "carrier-vanishes", None),
        ("idle-timeout", "agent-hangs-up", None),
        ("idle-timeout", "end-called", None),
    ],
)
async def test_an_end_during_teardown_does_not_change_the_reason(
    autojump_clock, ending, late, returned_at
):
    agent = FakeEchoAgent(delay=0.1, hangup_after=7.0 if late == "agent-hangs-up" else None)
    if ending == "upstream-stalled":
        reason, due, settings = Reason.UPSTREAM_STALLED, 1.02 + 5, NO_RESUME
    else:
        reason, due, settings = Reason.IDLE_TIMEOUT, 0.98 + 5, Settings(idle_timeout=5)
    async with rig(settings, agent=agent) as r:
        if ending == "upstream-stalled":
            await r.accept_sim(seconds=20)
            r.at(1.005, lambda: r.upstream.stop_writing())
        else:
            await r.accept_sim(seconds=10, stall_after=1.0)
            r.at(2, lambda: r.session.stream.stop_reading())
        r.at(2, lambda: r.sim.stream.stop_reading())
        call = r.call()
        if late == "carrier-vanishes":
            r.when(7.0, lambda: r.sim.stream.vanish())
        elif late == "end-called":
            r.at(7.0, lambda: call.end(Reason.SERVER_SHUTDOWN))
        disconnect = await call.run()
        returned = r.now()
    assert disconnect.reason is reason
    assert call.disconnect is disconnect
    decided = r.rel(r.carrier_tap.first_close_at)
    assert decided == on_time(due)
    if returned_at is None:  # (None: the close handshakes ran out of time)
        returned_at = decided + CLOSE_TIMEOUT
    assert returned == approx(returned_at)
    r.assert_accounted_once(reason)
    assert r.registry.recent[0].reason is reason
    # both peers were told the reason at the decision instant, and nothing else after it
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), reason.close_code, reason.value)]
    carrier_closed = 7.0 if late == "carrier-vanishes" else returned_at
    assert r.rel(r.carrier_tap.closed_at) == approx(carrier_closed)
    if reason is Reason.UPSTREAM_STALLED:
        assert r.upstream.close_frames == []  # known dead: aborted at once
        assert r.rel(r.upstream.closed_at) == approx(decided)
    else:
        assert r.upstream.close_frames == [(approx(r.t0 + decided), 1000, reason.value)]
        # the agent's own close at 7 completes the handshake; else it times out
        upstream_closed = 7.0 if late == "agent-hangs-up" else returned_at
        assert r.rel(r.upstream.closed_at) == approx(upstream_closed)
        if late == "agent-hangs-up":
            assert r.session.close_code == 1011  # the agent's hang-up, after our close


# --- teardown is bounded --------------------------------------------------------------------------


@pytest.mark.parametrize("frozen", ["carrier", "agent-and-carrier"])
async def test_teardown_is_bounded_when_close_handshakes_cannot_finish(autojump_clock, frozen):
    """Both peers are closed side by side: teardown takes the longer of the two handshakes (one
    close_timeout when neither can finish), not their sum."""
    settings = Settings(idle_timeout=5)
    async with rig(settings) as r:
        await r.accept_sim(seconds=10, stall_after=1.0)
        r.at(1.5, lambda: r.sim.stream.stop_reading())
        if frozen == "agent-and-carrier":
            r.at(1.5, lambda: r.session.stream.stop_reading())
        disconnect = await r.run()
        returned = r.now()
    decided = r.rel(r.carrier_tap.first_close_at)
    assert decided == on_time(0.98 + 5)
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    # both close frames go out at the decision instant
    assert r.upstream.close_frames == [(approx(r.t0 + decided), 1000, "idle_timeout")]
    assert r.carrier_tap.close_frames == [(approx(r.t0 + decided), 1000, "idle_timeout")]
    assert returned == approx(decided + CLOSE_TIMEOUT)
    assert returned - decided <= settings.teardown_timeout
    # both streams closed by the bridge, whatever the peers did; a reading agent closes at once
    assert r.rel(r.carrier_tap.closed_at) == approx(returned)
    upstream_closed = decided + CLOSE_TIMEOUT if frozen == "agent-and-carrier" else decided
    assert r.rel(r.upstream.closed_at) == approx(upstream_closed)
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)
    assert r.registry.recent[0].ended_at - r.t0 == approx(returned)


async def test_teardown_is_bounded_when_carrier_close_never_returns(autojump_clock):
    class NeverCloses:
        def __init__(self, inner):
            self.inner = inner
            self.close_called_at = None

        async def receive(self):
            return await self.inner.receive()

        async def send(self, frame):
            await self.inner.send(frame)

        async def close(self, code, reason):
            self.close_called_at = trio.current_time()
            await trio.sleep_forever()

    settings = Settings(idle_timeout=5)
    async with rig(settings) as r:
        await r.accept_sim(seconds=10, stall_after=1.0)
        carrier = NeverCloses(r.carrier)
        disconnect = await run_call(
            carrier,
            ENDPOINT,
            settings=settings,
            metrics=r.metrics,
            registry=r.registry,
            connect_stream=r.connector(),
        )
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    decided = r.rel(carrier.close_called_at)
    assert decided == on_time(5.98)
    assert returned == approx(decided + CLOSE_TIMEOUT)
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)


# --- how precise a re-armed deadline is (docs/timeouts.md) ----------------------------------------


def remembered(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Every ``Deadline`` or ``Watchdog`` (``name``) the call makes from now on, in order: did a
    deadline kept while a task listened fire (``ended_early``)? What does the scope hold now?"""
    made: list[Any] = []

    class Remembered(getattr(call_module, name)):  # type: ignore[misc]
        __slots__ = ()

        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(call_module, name, Remembered)
    return made


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Deadline]:
    """caller_to_upstream's scopes."""
    return remembered(monkeypatch, "Deadline")


@pytest.fixture
def watchdogs(monkeypatch: pytest.MonkeyPatch) -> list[Watchdog]:
    """The call's Watchdogs: the start's, then upstream_to_caller's scopes."""
    return remembered(monkeypatch, "Watchdog")


@pytest.mark.parametrize("idle_timeout", [5, 60])
@pytest.mark.parametrize("interval", [0.02, 0.05, 0.3])
async def test_idle_timeout_fires_on_time_whatever_the_frame_cadence(
    autojump_clock, interval, idle_timeout
):
    """Frames every ``interval`` for 2 s, then silence: the call ends idle_timeout after the last
    frame, up to LATENESS later, never earlier. (With 5 s the deadline the last send left armed is
    the idle deadline's own, up to LATENESS late; with 60 s it fires 5 s into the silence, the task
    listens on under a fresh scope, and the idle deadline is armed exactly.)"""
    count = int(2 / interval)
    script = [(0, start_frame())] + [(0.1 + interval * i, media_frame(i)) for i in range(count)]
    last = 0.1 + interval * (count - 1)
    async with rig(Settings(idle_timeout=idle_timeout)) as r:
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.IDLE_TIMEOUT
    assert returned == on_time(last + idle_timeout)
    assert r.carrier_close == (1000, "idle_timeout", approx(returned))
    assert r.session.audio_in == count  # every frame went to the provider


async def test_a_frame_stream_keeps_the_call_alive_past_many_idle_timeouts(autojump_clock):
    """idle_timeout 0.5 s (25 frames), a caller streaming for 60 s: the deadline stays ahead of
    every frame, moved at most once per LATENESS of frames (4 of 5 re-arms move nothing)."""
    async with rig(Settings(idle_timeout=0.5)) as r:
        await r.accept_sim(seconds=60)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(59.98)
    assert r.session.audio_in == r.sim.result.frames_sent == 3000


async def test_a_silence_longer_than_send_timeout_does_not_end_the_call(autojump_clock, counted):
    """The wait for the caller's next frame keeps the deadline the last send to the provider left
    armed (send_timeout, 5 s): a 7 s silence outlasts it. It fires while the task listens, the task
    listens on under a fresh scope, from the same instant: the call goes on (idle_timeout is 10 s),
    and every frame after the silence reaches the provider."""
    script = [(0, start_frame())]
    script += [(0.1 + 0.02 * i, media_frame(i)) for i in range(50)]  # to 1.08
    script += [(8.08 + 0.02 * i, media_frame(50 + i)) for i in range(50)]  # after 7 s of silence
    script += [(9.5, stop_frame(102))]
    async with rig(Settings(idle_timeout=10)) as r:
        await r.accept_script(script)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(9.5)
    assert r.session.audio_in == 100
    assert [d.ended_early for d in counted] == [True, False]  # it fired once, in the silence


@pytest.mark.parametrize("then", ["stop", "silence"])
async def test_a_frame_that_comes_as_the_kept_deadline_fires_is_not_lost(
    autojump_clock, counted, then
):
    """The frame arrives in the very tick the deadline kept while listening fires (the clock is
    moved onto it while the receive returns): the receive has the frame, the scope is cancelled.
    The frame is handed to the next pass's fresh scope and reaches the provider; and it ends the
    silence like any frame: a caller silent after it is idle only idle_timeout after it (not
    after the frame before it, as when the handed-over frame did not restart the count)."""
    received_at: list[float] = []

    class LateFrame:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        async def receive(self) -> str | bytes:
            frame = await self.inner.receive()  # type: ignore[attr-defined]
            if trio.current_time() - r.t0 > 2:  # the first frame after the pause
                watch = counted[-1]
                autojump_clock.jump(watch.deadline - trio.current_time())
                await trio.lowlevel.cancel_shielded_checkpoint()  # the deadline expires here
                assert watch.expired
                received_at.append(r.now())
                self.receive = self.inner.receive  # type: ignore[method-assign,attr-defined]
            return frame

        async def send(self, frame: str | bytes) -> None:
            await self.inner.send(frame)  # type: ignore[attr-defined]

        async def close(self, code: int, reason: str) -> None:
            await self.inner.close(code, reason)  # type: ignore[attr-defined]

    script = [(0, start_frame())] + [(0.1 + 0.02 * i, media_frame(i)) for i in range(50)]
    script += [(3.0, media_frame(50))]
    if then == "stop":
        script += [(3.0, stop_frame(52))]
    async with rig(Settings(idle_timeout=100 if then == "stop" else 10)) as r:
        await r.accept_script(script)
        r.carrier = LateFrame(r.carrier)
        disconnect = await r.run()
        returned = r.now()
    assert r.session.audio_in == 51  # the frame of the expiring tick too
    assert counted[0].ended_early is False  # handed over, not cut short
    if then == "stop":
        assert disconnect.reason is Reason.CALLER_STOP
        assert [d.ended_early for d in counted] == [False, False]
    else:
        (late,) = received_at
        assert late == on_time(0.1 + 0.02 * 49 + 5)  # the send's kept deadline
        assert disconnect.reason is Reason.IDLE_TIMEOUT
        assert returned == on_time(late + 10)


def talk_pause_talk(pause_from: float, pause_to: float, stop_at: float) -> list[tuple[float, str]]:
    """A second of caller audio, a pause (the echo agent says nothing either), a second more."""
    script = [(0, start_frame())]
    script += [(0.1 + 0.02 * i, media_frame(i)) for i in range(50)]
    script += [(pause_to + 0.02 * i, media_frame(50 + i)) for i in range(50)]
    script += [(stop_at, stop_frame(102))]
    assert 0.1 + 0.02 * 49 < pause_from <= pause_to
    return script


async def test_a_provider_silence_longer_than_send_timeout_does_not_end_the_call(
    autojump_clock, watchdogs
):
    """upstream_to_caller waits for the provider with no deadline of its own, keeping the
    send_timeout deadline its last send to the carrier left (restartable). The agent is silent
    for 7 s: that deadline fires while the task listens, the task listens on under a fresh scope,
    and every echo after the silence reaches the caller."""
    async with rig(Settings(idle_timeout=10)) as r:
        await r.accept_script(talk_pause_talk(1.1, 8.08, 9.5))
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(9.5)
    record = r.registry.recent[0]
    assert record.bytes_to_caller == 100 * 160  # every echo, before and after the silence
    sender = [w for w in watchdogs if w.ended_early]
    assert len(sender) == 1  # it fired once, in the silence (the start's scope never did)
    r.assert_accounted_once(Reason.CALLER_STOP)


async def test_a_provider_frame_that_comes_as_the_kept_deadline_fires_is_not_lost(
    autojump_clock, watchdogs, monkeypatch
):
    """The provider's frame arrives in the very tick the send deadline kept while listening fires
    (the clock is moved onto it while the receive returns): the receive has the frame, the scope
    is cancelled. The frame is handed to the next pass's fresh scope and reaches the caller."""
    from voxbridge.session.link import ProviderLink

    receive = ProviderLink.receive
    jumped: list[float] = []

    async def late_receive(self: ProviderLink, **kwargs: object) -> object:
        got = await receive(self, **kwargs)  # type: ignore[arg-type]
        if not jumped and trio.current_time() - r.t0 > 3:  # the first echo after the pause
            watch = watchdogs[-1]
            jumped.append(watch.deadline)
            autojump_clock.jump(watch.deadline - trio.current_time())
            await trio.lowlevel.cancel_shielded_checkpoint()  # the deadline expires here
            assert watch.expired
        return got

    monkeypatch.setattr(ProviderLink, "receive", late_receive)
    async with rig(Settings(idle_timeout=100)) as r:
        await r.accept_script(talk_pause_talk(1.1, 3.0, 9.0))
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    assert jumped  # the case happened
    # every echo, the one of the expiring tick too (the jump merges the queued ones: bytes count)
    assert r.registry.recent[0].bytes_to_caller == 100 * 160
    assert not any(w.ended_early for w in watchdogs)  # handed over, not cut short


async def test_a_resume_is_not_cut_short_by_the_kept_send_deadline(autojump_clock, watchdogs):
    """The provider drops the session at 4 s (1011: resumed), and the new connection takes 2.5 s.
    The send deadline the last echo left (about 6.2 s) falls inside the resume: the link disarms
    it before resuming (``before_resume``), so the resume completes once and the echoes after the
    pause reach the caller through the new session."""
    slow: list[float] = []

    async with rig(Settings(idle_timeout=10), agent=FakeEchoAgent(delay=0.1, hangup_after=4)) as r:
        fast = r.connector()

        async def connect(host: str, port: int) -> trio.abc.Stream:
            if r.connects:  # the resume's connection
                slow.append(r.now())
                await trio.sleep(2.5)
            return await fast(host, port)

        await r.accept_script(talk_pause_talk(1.1, 8.08, 9.5))
        disconnect = await r.run(connect)
    assert disconnect.reason is Reason.CALLER_STOP
    assert slow == [approx(4)] and r.connects == 2
    first, second = r.agent.sessions
    assert first.close_code == 1011 and second.audio_in == 50
    record = r.registry.recent[0]
    assert record.resumes == 1 and record.bytes_to_caller == 100 * 160
    assert not any(w.ended_early for w in watchdogs)  # the resume ran with nothing kept
    r.assert_accounted_once(Reason.CALLER_STOP)


async def test_a_provider_close_that_comes_as_the_kept_deadline_fires_is_resumed(
    autojump_clock, watchdogs, monkeypatch
):
    """The provider drops the session (1011, at 4 s) and the close reaches the sender in the very
    tick the send deadline kept while it listened fires (the clock is moved onto it as the close
    is reported). That deadline can no longer be dropped: the wait ends before the resume begins,
    and the next pass resumes under a fresh scope -- the call goes on (not ``internal_error``
    from a resume cut short)."""
    from voxbridge.upstream.connection import Upstream, UpstreamClosed

    receive = Upstream.receive
    jumped: list[float] = []

    async def closing_late(self: Upstream) -> str | bytes:
        try:
            return await receive(self)
        except UpstreamClosed:
            if not jumped:
                watch = watchdogs[-1]
                jumped.append(r.now())
                autojump_clock.jump(watch.deadline - trio.current_time())
                await trio.lowlevel.cancel_shielded_checkpoint()  # the deadline expires here
                assert watch.expired
            raise

    monkeypatch.setattr(Upstream, "receive", closing_late)
    agent = FakeEchoAgent(delay=0.1, hangup_after=4)
    async with rig(Settings(idle_timeout=20), agent=agent) as r:
        await r.accept_script(talk_pause_talk(1.1, 8.08, 9.5))
        disconnect = await r.run()
    assert jumped == [approx(4)]  # the case happened
    assert disconnect.reason is Reason.CALLER_STOP
    first, second = r.agent.sessions
    assert first.close_code == 1011 and second.audio_in == 50
    record = r.registry.recent[0]
    assert record.resumes == 1 and record.bytes_to_caller == 100 * 160
    r.assert_accounted_once(Reason.CALLER_STOP)


async def test_barge_in_frames_to_the_provider_never_run_under_a_kept_deadline(
    autojump_clock, watchdogs, monkeypatch
):
    """Between two carrier sends the sender waits for the provider under the deadline the last
    send left (restartable). Its other waits cannot be started over, so none may run under it:
    the barge-in frames to the provider (``response.cancel``, the truncate) run under none of
    the task's (the link bounds them). (A burst's settle: tests/test_call_coalescing.py.)"""
    from test_call_providers import bridged, served

    from voxbridge.audio import tone
    from voxbridge.session.link import ProviderLink
    from voxbridge.testing.fake_openai import FakeOpenAIRealtime

    send_within = ProviderLink.send_within
    armed_at_send_within: list[float] = []

    async def sending_within(self: ProviderLink, *args: object) -> bool:
        armed_at_send_within.append(watchdogs[-1].deadline)
        return await send_within(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ProviderLink, "send_within", sending_within)
    fake = await served(
        FakeOpenAIRealtime(speak=[(0.5, tone(3.0, 300), "a long answer")], speech_started_at=[1.7])
    )
    async with bridged(fake, Settings(), seconds=4.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.sessions[0].truncates) == 1  # the barge-in happened
    assert armed_at_send_within and set(armed_at_send_within) == {math.inf}


async def test_caller_stalled_in_a_burst_fires_on_time(autojump_clock):
    """The agent floods 4 s of audio at once; the carrier stops taking writes in the middle of it.
    The blocked send's deadline was kept from the send before it (re-armed): caller_stalled comes
    send_timeout after the blocked write, up to LATENESS later."""
    async with rig(agent=FakeEchoAgent(delay=0.1, flood=200)) as r:
        await r.accept_sim(seconds=20)
        r.carrier_tap.writes_before_stall = r.carrier_tap.writes + 9  # 4 media messages, 4 marks
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STALLED
    blocked = r.rel(r.carrier_tap.first_blocked_write_at)
    decided = r.rel(r.carrier_tap.first_close_at)
    assert decided == on_time(blocked + 5)
    assert returned == approx(decided + CLOSE_TIMEOUT)  # the close cannot leave either
    r.assert_accounted_once(Reason.CALLER_STALLED)


# --- Watchdog and deadline ------------------------------------------------------------------------


async def test_watchdog_unarmed_never_fires(autojump_clock):
    t0 = trio.current_time()
    with Watchdog():
        await trio.sleep(10_000)
    assert elapsed(t0) == approx(10_000)


async def test_watchdog_fires_at_exactly_the_armed_time_with_its_reason(autojump_clock):
    t0 = trio.current_time()
    watchdog = Watchdog()
    with pytest.raises(Disconnect) as caught, watchdog:
        watchdog.arm(5, Reason.IDLE_TIMEOUT)
        await trio.sleep_forever()
    assert elapsed(t0) == approx(5)
    assert caught.value.reason is Reason.IDLE_TIMEOUT
    assert caught.value.detail == "waited 5.000s (limit 5s)"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


async def test_watchdog_since_counts_from_the_given_instant(autojump_clock):
    t0 = trio.current_time()
    await trio.sleep(2)
    watchdog = Watchdog()
    with pytest.raises(Disconnect) as caught, watchdog:
        watchdog.arm(5, Reason.START_TIMEOUT, since=t0)
        await trio.sleep_forever()
    assert elapsed(t0) == approx(5)
    assert caught.value.reason is Reason.START_TIMEOUT
    assert caught.value.detail == "waited 5.000s (limit 5s)"


async def test_watchdog_since_already_past_fires_at_the_next_checkpoint(autojump_clock):
    t0 = trio.current_time()
    await trio.sleep(7)
    watchdog = Watchdog()
    with pytest.raises(Disconnect) as caught, watchdog:
        watchdog.arm(5, Reason.IDLE_TIMEOUT, since=t0)
        await trio.lowlevel.checkpoint()
        raise AssertionError("not reached")  # pragma: no cover
    assert elapsed(t0) == approx(7)
    assert caught.value.detail == "waited 7.000s (limit 5s)"


async def test_watchdog_deadline_moves_with_each_rearm(autojump_clock):
    t0 = trio.current_time()
    send, receive = trio.open_memory_channel[int](0)
    received = []

    async def sender() -> None:
        for at in (3, 6, 11):
            await trio.sleep_until(t0 + at)
            await send.send(at)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        with pytest.raises(Disconnect) as caught, (watchdog := Watchdog()):
            while True:
                watchdog.arm(4, Reason.IDLE_TIMEOUT)
                received.append(await receive.receive())
        nursery.cancel_scope.cancel()
    # 3 and 6 each arrive within 4 s of the previous one; 11 comes 5 s after 6. A re-arm that
    # moves the deadline later moves it LATENESS further, for the re-arms that follow
    assert received == [3, 6]
    assert caught.value.reason is Reason.IDLE_TIMEOUT
    assert elapsed(t0) == approx(10 + LATENESS)


async def test_watchdog_rearm_replaces_reason_and_deadline(autojump_clock):
    t0 = trio.current_time()
    watchdog = Watchdog()
    with pytest.raises(Disconnect) as caught, watchdog:
        watchdog.arm(10, Reason.IDLE_TIMEOUT)
        watchdog.arm(2, Reason.UPSTREAM_STALLED)
        await trio.sleep_forever()
    assert elapsed(t0) == approx(2)
    assert caught.value.reason is Reason.UPSTREAM_STALLED
    assert caught.value.detail == "waited 2.000s (limit 2s)"

    t0 = trio.current_time()
    watchdog = Watchdog()
    with pytest.raises(Disconnect) as caught, watchdog:
        watchdog.arm(2, Reason.UPSTREAM_STALLED)
        watchdog.arm(10, Reason.IDLE_TIMEOUT)  # later, too: a rearm can extend (by LATENESS more)
        await trio.sleep_forever()
    assert elapsed(t0) == approx(10 + LATENESS)
    assert caught.value.reason is Reason.IDLE_TIMEOUT


async def test_watchdog_rearm_after_an_unnoticed_expiry_blames_the_right_deadline(autojump_clock):
    """The call tasks' pattern: arm, a wait that completes without blocking, arm for the next wait.

    Here the first (idle) deadline has already passed when the wait starts, but the wait completes
    at once (a frame was queued). The re-arm gives the next wait (a send) a fresh 5 s. The watchdog
    may report the idle deadline that expired, or let the send run its fresh 5 s -- it must not
    end the wait at once blaming the send ("upstream_stalled: waited 0.000s").
    """
    t0 = trio.current_time()
    send, receive = trio.open_memory_channel[str](1)
    send.send_nowait("frame")  # queued: receive() returns without blocking
    await trio.sleep(7)
    watchdog = Watchdog()
    with pytest.raises(Disconnect) as caught, watchdog:
        watchdog.arm(5, Reason.IDLE_TIMEOUT, since=t0)  # expired 2 s ago
        assert await receive.receive() == "frame"
        watchdog.arm(5, Reason.UPSTREAM_STALLED)
        await trio.sleep_forever()
    fired_at, reason = elapsed(t0), caught.value.reason
    assert (reason, fired_at) in [
        (Reason.IDLE_TIMEOUT, approx(7)),
        (Reason.UPSTREAM_STALLED, approx(12)),
    ], caught.value


async def test_watchdog_disarm(autojump_clock):
    t0 = trio.current_time()
    watchdog = Watchdog()
    with watchdog:
        watchdog.arm(1, Reason.CALLER_STALLED)
        watchdog.disarm()
        await trio.sleep(100)  # no deadline of the watchdog's
    assert elapsed(t0) == approx(100)

    t0 = trio.current_time()
    with pytest.raises(Disconnect) as caught, (watchdog := Watchdog()):
        watchdog.arm(1, Reason.CALLER_STALLED)
        watchdog.disarm()
        await trio.sleep(3)
        watchdog.arm(1, Reason.CALLER_STALLED)  # armed again after a disarm
        await trio.sleep_forever()
    assert elapsed(t0) == approx(4)
    assert caught.value.reason is Reason.CALLER_STALLED


async def test_watchdog_finishing_in_time_raises_nothing(autojump_clock):
    t0 = trio.current_time()
    watchdog = Watchdog()
    with watchdog:
        watchdog.arm(5, Reason.IDLE_TIMEOUT)
        await trio.sleep(4.999)
    await trio.sleep(10)  # the expired deadline of an exited watchdog does nothing
    assert elapsed(t0) == approx(14.999)


async def test_watchdog_lets_other_exceptions_through(autojump_clock):
    watchdog = Watchdog()
    with pytest.raises(KeyError), watchdog:
        watchdog.arm(5, Reason.IDLE_TIMEOUT)
        await trio.sleep(1)
        raise KeyError("boom")
    disconnect = Disconnect(Reason.CALLER_STOP)
    with pytest.raises(Disconnect) as caught, (watchdog := Watchdog()):
        watchdog.arm(5, Reason.IDLE_TIMEOUT)
        raise disconnect
    assert caught.value is disconnect


@pytest.mark.parametrize(("outer_after", "disconnect"), [(3.0, False), (5.0, False), (5.001, True)])
async def test_watchdog_does_not_claim_an_outer_cancellation(
    autojump_clock, outer_after, disconnect
):
    # An outer scope cancelled first -- or at the very same instant as the watchdog -- is the
    # outermost cancelled scope: the Cancelled is its, not the watchdog's (max_duration relies on
    # this). Only when the watchdog fires first does it become a Disconnect.
    t0 = trio.current_time()
    raised = None
    with trio.move_on_after(outer_after) as outer:
        try:
            with (watchdog := Watchdog()):
                watchdog.arm(5, Reason.IDLE_TIMEOUT)
                await trio.sleep_forever()
        except Disconnect as exc:
            raised = exc
    assert outer.cancelled_caught is not disconnect
    assert (raised is not None) is disconnect
    assert elapsed(t0) == approx(5.0 if disconnect else outer_after)


async def test_a_deadline_re_armed_per_frame_moves_once_per_lateness_and_fires_on_time(
    autojump_clock,
):
    """Re-armed for 5 s every 20 ms for 2 s, the scope's deadline moves when it would fire early,
    and then LATENESS past what is needed: at most once per LATENESS of re-arms, not 100 times.
    It fires from the last wait's deadline to LATENESS after it, never before."""
    watch = Deadline()
    moves = 0
    with pytest.raises(TimeoutError), watch:
        for _ in range(100):
            before = watch.deadline
            watch.arm(5, TimeoutError)
            moves += watch.deadline != before
            due = trio.current_time() + 5
            assert due <= watch.deadline <= due + LATENESS  # never early, at most LATENESS late
            await trio.sleep(0.02)
        await trio.sleep_forever()
    assert trio.current_time() == on_time(due)
    assert moves <= 1 + 100 * 0.02 / LATENESS  # the first arm, then one per LATENESS


async def test_a_re_arm_that_would_fire_more_than_lateness_late_moves_exactly(autojump_clock):
    t0 = trio.current_time()
    watch = Deadline()
    with pytest.raises(TimeoutError) as caught, watch:
        watch.arm(5, TimeoutError)
        watch.arm(5 - LATENESS, TimeoutError)  # earlier by LATENESS: kept, fires LATENESS late
        assert watch.deadline == t0 + 5
        watch.arm(4, TimeoutError)  # earlier by more: moved, to exactly what is needed
        assert watch.deadline == t0 + 4
        await trio.sleep_forever()
    assert elapsed(t0) == approx(4)
    assert str(caught.value) == "waited 4.000s (limit 4s)"


async def test_a_restartable_wait_keeps_an_earlier_deadline_and_ends_quietly(autojump_clock):
    """A wait that can be started over keeps the earlier deadline the wait before it left: if that
    one fires first, the block ends without an error (``ended_early``), for the caller to wait
    again under a fresh Deadline. A later one is still moved (never more than LATENESS late)."""
    t0 = trio.current_time()
    watch = Deadline()
    with watch:
        watch.arm(5, TimeoutError)  # a send's deadline
        watch.arm(60, TimeoutError, restartable=True)  # then a receive's, from a queue
        assert watch.deadline == t0 + 5
        await trio.sleep_forever()
    assert elapsed(t0) == approx(5)
    assert watch.ended_early and watch.expired

    t0 = trio.current_time()
    watch = Deadline()
    with pytest.raises(TimeoutError), watch:
        watch.arm(60, TimeoutError)
        watch.arm(5, TimeoutError, restartable=True)  # its own deadline is earlier: moved to it
        await trio.sleep_forever()
    assert elapsed(t0) == approx(5)
    assert not watch.ended_early


async def test_a_restartable_disarm_keeps_the_deadline_and_ends_quietly(autojump_clock):
    """``disarm(restartable=True)``: the next wait has no deadline of its own and can be started
    over, so the deadline left armed is not moved; if it fires, the block ends without an error.
    A plain disarm moves it to never."""
    t0 = trio.current_time()
    watch = Deadline()
    with watch:
        watch.arm(5, TimeoutError)  # a send's deadline
        watch.disarm(restartable=True)  # then a wait with none of its own
        assert watch.deadline == t0 + 5
        await trio.sleep_forever()
    assert elapsed(t0) == approx(5)
    assert watch.ended_early and watch.expired

    watch = Deadline()
    with watch:
        watch.arm(5, TimeoutError)
        watch.disarm()
        assert watch.deadline == math.inf
        await trio.sleep(10)
    assert not watch.ended_early and not watch.expired


async def test_deadline_fires_with_its_reason(autojump_clock):
    t0 = trio.current_time()
    with pytest.raises(Disconnect) as caught, deadline(5, Reason.UPSTREAM_STALLED):
        await trio.sleep_forever()
    assert elapsed(t0) == approx(5)
    assert caught.value.reason is Reason.UPSTREAM_STALLED
    assert caught.value.detail == "waited 5.000s (limit 5s)"


async def test_deadline_in_time_and_nested(autojump_clock):
    t0 = trio.current_time()
    with deadline(5, Reason.UPSTREAM_STALLED):
        await trio.sleep(4.5)
    assert elapsed(t0) == approx(4.5)

    t0 = trio.current_time()
    with (
        pytest.raises(Disconnect) as caught,
        deadline(5, Reason.UPSTREAM_STALLED),
        deadline(2, Reason.CALLER_STALLED),
    ):
        await trio.sleep_forever()
    assert elapsed(t0) == approx(2)
    assert caught.value.reason is Reason.CALLER_STALLED

    t0 = trio.current_time()
    with (
        pytest.raises(Disconnect) as caught,
        deadline(2, Reason.UPSTREAM_STALLED),
        deadline(5, Reason.CALLER_STALLED),
    ):
        await trio.sleep_forever()
    assert elapsed(t0) == approx(2)
    assert caught.value.reason is Reason.UPSTREAM_STALLED


async def test_a_caller_flood_is_bounded_to_real_time_and_counted(autojump_clock):
    """Caller audio may run at most FLOOD_BURST_MS ahead of real time; the excess is dropped
    and counted, never queued and never sent to the (paid) provider."""
    flood = [(1.0, media_frame(i)) for i in range(300)]  # 6 s of audio in one instant
    script = [(0, start_frame()), *flood, (5.0, media_frame(300)), (5.0, stop_frame(303))]
    async with rig(Settings(idle_timeout=30)) as r:
        await r.accept_script(script)
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    burst = FLOOD_BURST_MS // 20  # 100 frames of 20 ms
    assert r.registry.recent[0].frames_from_caller == burst + 1  # and one in real time, later
    dropped = r.metrics.registry.get_sample_value(
        "voxbridge_media_frames_dropped_total", {"direction": "to_upstream"}
    )
    assert dropped == 300 - burst
    assert r.session.audio_in == burst + 1  # what the provider received
