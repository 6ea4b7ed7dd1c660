"""Cancelling a call from outside, at each of its await points, and ending it via ``Call.end``.

A host cancellation must: end the call with ``server_shutdown`` (counted once, nothing else
counted), still run the (shielded, bounded) teardown -- provider socket closed with 1001, carrier
told 1001 where it can hear it --, deregister the call, and then let the cancellation propagate
(``run_call`` does not return). Times are seconds after the carrier socket was accepted.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from callkit import Rig, approx, connected_frame, media_frame, rig, start_frame

from voxbridge.deadlines import LATENESS
from voxbridge.errors import Reason
from voxbridge.settings import Settings

CLOSE_TIMEOUT = Settings().close_timeout
NOT_RETURNED: Any = object()


async def run_cancelled_at(r: Rig, at: float, connect_stream: Any = None) -> trio.CancelScope:
    """Run the call in a scope the host cancels at ``at``; check it did not return normally."""
    result = NOT_RETURNED
    with trio.CancelScope() as scope:
        r.at(at, scope.cancel)
        result = await r.run(connect_stream)
    assert result is NOT_RETURNED, f"run_call returned {result!r} instead of propagating"
    assert scope.cancelled_caught
    return scope


def assert_shut_down(r: Rig) -> None:
    r.assert_accounted_once(Reason.SERVER_SHUTDOWN)
    record = r.registry.recent[0]
    assert record.close_code == 1001


# --- before the provider session exists -----------------------------------------------------------


@pytest.mark.parametrize("script", [[], [(0, connected_frame())]], ids=["silent", "connected-only"])
async def test_cancel_while_waiting_for_start(autojump_clock, script):
    async with rig() as r:
        await r.accept_script(script)
        await run_cancelled_at(r, 4)
        returned = r.now()
    assert returned == approx(4)
    assert r.connects == 0
    assert r.agent.sessions == []
    assert r.carrier_tap.close_frames == [(approx(r.t0 + 4), 1001, "server_shutdown")]
    assert r.carrier_close == (1001, "server_shutdown", approx(4))
    assert_shut_down(r)
    assert r.registry.recent[0].upstream_opened is False


@pytest.mark.parametrize("connector", ["hanging", "silent"], ids=["tcp-hangs", "handshake-hangs"])
async def test_cancel_while_connecting_upstream(autojump_clock, connector):
    async with rig() as r:
        await r.accept_script([(1, start_frame())])
        await run_cancelled_at(r, 4, getattr(r, f"{connector}_connector")())
        returned = r.now()
    assert returned == approx(4)
    assert r.connects == 1
    assert r.agent.sessions == []
    assert r.carrier_close == (1001, "server_shutdown", approx(4))
    assert_shut_down(r)
    assert r.registry.recent[0].upstream_opened is False
    if connector == "silent":  # TCP was open: the bridge must close what it opened
        assert r.rel(r.upstream.closed_at) == approx(4), "provider stream left open"


async def test_cancel_while_sending_session_update(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=10)
        await run_cancelled_at(r, 3, r.connector(writes_before_stall=1))
        returned = r.now()
    assert r.rel(r.upstream.first_blocked_write_at) == approx(0)  # session.update, blocked
    assert r.session.session_updates == []
    # a session never set up goes with the cancelled attempt: aborted at 3, no close frame
    assert r.upstream.close_frames == []
    assert r.rel(r.upstream.closed_at) == approx(3)
    assert r.session.is_closed
    assert r.rel(r.session.closed_at) == approx(3)
    assert r.session.close_code == 1006
    assert r.carrier_close == (1001, "server_shutdown", approx(3))
    assert returned == approx(3)  # nothing left to wait for
    assert_shut_down(r)
    assert r.registry.recent[0].upstream_opened is False


# --- mid-call ------------------------------------------------------------------------------------


async def test_cancel_mid_call_while_receiving_from_the_caller(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=10, stall_after=1.0)  # silent from 0.98 on, socket open
        await run_cancelled_at(r, 3)
        returned = r.now()
    assert returned == approx(3)
    assert r.session.session_updates  # the call was fully up
    assert r.upstream.close_frames == [(approx(r.t0 + 3), 1001, "server_shutdown")]
    assert r.session.is_closed
    assert r.rel(r.session.closed_at) == approx(3)
    assert r.session.close_code == 1001
    assert r.session.close_reason == "server_shutdown"
    assert r.rel(r.upstream.closed_at) == approx(3)
    assert r.carrier_close == (1001, "server_shutdown", approx(3))
    assert_shut_down(r)
    assert r.registry.recent[0].frames_from_caller == 50


async def test_cancel_during_a_blocked_upstream_send(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.upstream.stop_writing())
        await run_cancelled_at(r, 3)  # before send_timeout (1.02 + 5) would fire
        returned = r.now()
    assert r.rel(r.upstream.first_blocked_write_at) == approx(1.02)
    # not yet known dead (send_timeout has not run out): a close handshake is tried at 3, and
    # the close frame cannot leave: the stream is closed after close_timeout
    assert r.upstream.close_frames == [(approx(r.t0 + 3), 1001, "server_shutdown")]
    assert r.rel(r.upstream.closed_at) == approx(3 + CLOSE_TIMEOUT)
    assert r.rel(r.session.closed_at) == approx(3 + CLOSE_TIMEOUT)
    assert r.session.close_code == 1006  # nothing could reach it; it saw the TCP close
    assert returned == approx(3 + CLOSE_TIMEOUT)
    # the carrier is closed side by side with the provider: at once
    assert r.carrier_tap.close_frames == [(approx(r.t0 + 3), 1001, "server_shutdown")]
    assert r.carrier_close == (1001, "server_shutdown", approx(3))
    assert_shut_down(r)


async def test_cancel_during_a_blocked_carrier_send(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.carrier_tap.stop_writing())
        await run_cancelled_at(r, 3)  # before send_timeout (1.02 + 5) would fire
        returned = r.now()
    assert r.rel(r.carrier_tap.first_blocked_write_at) == approx(1.02)
    # the provider is fine: closed at once, going away
    assert r.rel(r.session.closed_at) == approx(3)
    assert r.session.close_code == 1001
    # the carrier's close frame cannot leave; its stream is closed after close_timeout
    assert r.carrier_tap.close_frames == [(approx(r.t0 + 3), 1001, "server_shutdown")]
    assert r.rel(r.carrier_tap.closed_at) == approx(3 + CLOSE_TIMEOUT)
    assert returned == approx(3 + CLOSE_TIMEOUT)
    assert r.carrier_close == (1006, None, approx(returned))
    assert_shut_down(r)


@pytest.mark.parametrize("frozen", ["bridge-hears-nothing", "agent-stops-reading"])
async def test_cancel_during_a_keepalive_ping(autojump_clock, frozen):
    settings = Settings(keepalive_interval=20, pong_timeout=10, idle_timeout=1000)
    async with rig(settings) as r:
        await r.accept_sim(seconds=10, stall_after=1.0)
        if frozen == "bridge-hears-nothing":
            r.at(5, lambda: r.upstream.stop_reading())
        else:
            r.at(5, lambda: r.session.stream.stop_reading())
        await run_cancelled_at(r, 25)  # the ping of 20 waits for its pong until 30
        returned = r.now()
    assert r.upstream.pings == [approx(r.t0 + 20)]
    assert r.metrics.registry.get_sample_value("voxbridge_upstream_ping_rtt_seconds_count") == 0
    # not yet known dead (pong_timeout has not run out): a close handshake is tried at 25; it
    # cannot complete, so the stream is closed after close_timeout
    assert r.upstream.close_frames == [(approx(r.t0 + 25), 1001, "server_shutdown")]
    assert r.rel(r.upstream.closed_at) == approx(25 + CLOSE_TIMEOUT)
    if frozen == "bridge-hears-nothing":  # the agent itself reads: it got the 1001 at once
        assert r.rel(r.session.closed_at) == approx(25)
        assert r.session.close_code == 1001
    assert returned == approx(25 + CLOSE_TIMEOUT)
    # the carrier is closed side by side with the provider: at once
    assert r.carrier_tap.close_frames == [(approx(r.t0 + 25), 1001, "server_shutdown")]
    assert r.carrier_close == (1001, "server_shutdown", approx(25))
    assert_shut_down(r)


# --- during teardown ------------------------------------------------------------------------------


async def test_cancel_again_during_teardown_does_not_cut_it_short(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=10, stall_after=1.0)
        r.at(2, lambda: r.upstream.stop_reading())  # the upstream close will take close_timeout
        result = NOT_RETURNED
        with trio.CancelScope() as outer:
            r.at(4, outer.cancel)  # while teardown waits for the provider (3 .. 5)
            with trio.CancelScope() as inner:
                r.at(3, inner.cancel)
                result = await r.run()
        returned = r.now()
    assert result is NOT_RETURNED
    assert outer.cancelled_caught
    assert r.upstream.close_frames == [(approx(r.t0 + 3), 1001, "server_shutdown")]
    assert r.rel(r.session.closed_at) == approx(3)
    assert r.session.close_code == 1001
    # teardown ran to its end: the carrier closed side by side at 3, the provider stream after
    # close_timeout (the bridge reads nothing from it, so the close reply is never heard)
    assert r.carrier_tap.close_frames == [(approx(r.t0 + 3), 1001, "server_shutdown")]
    assert r.carrier_close == (1001, "server_shutdown", approx(3))
    assert r.rel(r.upstream.closed_at) == approx(3 + CLOSE_TIMEOUT)
    assert returned == approx(3 + CLOSE_TIMEOUT)
    assert_shut_down(r)


async def test_cancel_during_teardown_of_an_ended_call_keeps_its_reason(autojump_clock):
    settings = Settings(idle_timeout=5)
    async with rig(settings) as r:
        await r.accept_sim(seconds=10, stall_after=1.0)  # idle_timeout decided at 5.98
        r.at(2, lambda: r.upstream.stop_reading())  # ... and the upstream close takes until 7.98
        with trio.CancelScope() as scope:
            r.at(7, scope.cancel)
            try:
                await r.run()
            finally:
                returned = r.now()
            await trio.lowlevel.checkpoint()  # the host's cancellation is not lost
        assert scope.cancelled_caught
    decided = r.upstream.close_frames[0][0] - r.t0
    assert 5.98 <= decided <= 5.98 + LATENESS + 1e-6  # a re-armed deadline: up to LATENESS late
    assert returned == approx(decided + CLOSE_TIMEOUT)
    assert r.upstream.close_frames == [(approx(r.t0 + decided), 1000, "idle_timeout")]
    assert r.rel(r.upstream.closed_at) == approx(returned)  # the cancel at 7 did not cut it short
    assert r.carrier_close == (1000, "idle_timeout", approx(decided))  # side by side: at once
    r.assert_accounted_once(Reason.IDLE_TIMEOUT)


# --- Call.end from another task (the drain path) --------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "at"),
    [("waiting-for-start", 2), ("connecting", 2), ("mid-call", 3)],
)
@pytest.mark.parametrize("how", ["call.end", "registry.end_all"])
async def test_end_from_another_task_returns_server_shutdown(autojump_clock, phase, at, how):
    async with rig() as r:
        if phase == "waiting-for-start":
            await r.accept_script([(5, start_frame()), (5.5, media_frame(0))])
            call = r.call()
        elif phase == "connecting":
            await r.accept_script([(1, start_frame())])
            call = r.call(r.hanging_connector())
        else:
            await r.accept_sim(seconds=10, stall_after=1.0)
            call = r.call()
        if how == "call.end":
            r.at(at, lambda: call.end(Reason.SERVER_SHUTDOWN, "draining"))
        else:
            r.at(at, lambda: r.registry.end_all(Reason.SERVER_SHUTDOWN, "draining"))
        assert not call.ended.is_set()
        disconnect = await call.run()
        returned = r.now()
    assert disconnect.reason is Reason.SERVER_SHUTDOWN
    assert disconnect.detail == "draining"
    assert call.disconnect is disconnect
    assert call.ended.is_set()
    assert returned == approx(at)
    assert r.carrier_close == (1001, "server_shutdown", approx(at))
    if phase == "mid-call":
        assert r.rel(r.session.closed_at) == approx(at)
        assert r.session.close_code == 1001
    else:
        assert r.agent.sessions == []
    assert_shut_down(r)


async def test_a_call_runs_once(autojump_clock):
    async with rig() as r:
        await r.accept_sim(seconds=1)
        call = r.call()
        first = await call.run()
        with pytest.raises(RuntimeError, match="runs once"):
            await call.run()
    assert first.reason is Reason.CALLER_STOP
    r.assert_accounted_once(Reason.CALLER_STOP)
