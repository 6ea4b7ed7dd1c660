"""Network faults between the server and its provider, through a ``FaultProxy`` on the provider leg.

``test_e2e_endings`` and ``test_e2e_providers`` end provider sessions with the fake's own
application-level knobs (a close frame with a code, an HTTP refusal, a fake that stops reading).
Here the wire misbehaves instead and the fake knows nothing: latency and three-byte writes the call
must survive; a window that closes (caught by the keepalive ping) and a FIN in the middle of a
frame, each resumed on a fresh connection; and the endings when the path stays broken: a blackhole
that takes every later connection too (handshakes never answered), a RST on every connection, a
handshake response cut short every time.
"""

from __future__ import annotations

import pytest
import trio
from faultkit import MARGIN, PATIENT, Rig, Trial, assert_clean_end, fault_call, within
from test_e2e_endings import Samples

from voxbridge.errors import Reason
from voxbridge.session.state import CallRecord
from voxbridge.testing import FaultProxy

LATENCY = 0.1  # seconds each way
SLACK = 0.05  # a ping already on its way when the fault hit may be the one that goes unanswered
FAULT_AT = 0.5  # seconds after the provider connection opened


def proxy_of(rig: Rig) -> FaultProxy:
    assert rig.provider_proxy is not None
    return rig.provider_proxy


def reconnects(samples: Samples, outcome: str) -> float:
    return samples.get(("voxbridge_upstream_reconnects_total", (("outcome", outcome),)), 0.0)


async def fault_soon(trial: Trial) -> FaultProxy:
    """Wait until the provider connection has been up FAULT_AT seconds; return its proxy."""
    proxy = proxy_of(trial.rig)
    await proxy.wait_for_connection()
    await trio.sleep(FAULT_AT)
    return proxy


def only_session_closed_cleanly(trial: Trial) -> None:
    assert len(trial.rig.fake.sessions) == 1
    session = trial.rig.fake.sessions[0]
    assert session.is_closed and session.close_code == 1000


async def test_latency_each_way_the_call_survives_and_pings_keep_up() -> None:
    async with fault_call(provider_proxy={"latency": LATENCY}, seconds=1.5, **PATIENT) as trial:
        outcome = await trial.ended()
    record = assert_clean_end(outcome, Reason.CALLER_STOP)
    assert trial.caller.echoed_verbatim()
    rtt = trial.caller.result.round_trip
    assert rtt is not None and rtt >= 2 * LATENCY
    samples = outcome.samples
    pings = samples[("voxbridge_upstream_ping_rtt_seconds_count", ())]
    assert pings >= 1
    assert samples[("voxbridge_upstream_ping_rtt_seconds_sum", ())] / pings >= 2 * LATENCY
    assert record.resumes == 0  # every pong in time
    only_session_closed_cleanly(trial)


async def test_three_byte_writes_the_call_survives_and_audio_round_trips() -> None:
    # What the server parses arrives three bytes per write: every WebSocket header (2 bytes, a
    # 2-byte length) split across writes. Only that way, and not one byte: a proxy in this
    # process making thousands of writes a second falls behind real time on a loaded box, and a
    # pong queued behind the audio would come late: the test would be about the proxy, not about
    # framing. The call lasts long enough for the echo to come back through the lagging pipe.
    options = {"provider_proxy": {}, "prepare": slice_down_to_three_bytes, **PATIENT}
    async with fault_call(seconds=1.5, close_wait=15.0, **options) as trial:
        outcome = await trial.ended()
    (conn,) = proxy_of(trial.rig).connections
    assert conn.writes_down >= conn.bytes_down / 3
    record = assert_clean_end(outcome, Reason.CALLER_STOP)
    assert trial.caller.echoed_verbatim()
    assert record.resumes == 0 and trial.rig.fake.sessions[0].audio_in > 0
    only_session_closed_cleanly(trial)


def slice_down_to_three_bytes(rig: Rig) -> None:
    proxy_of(rig).slice_to(3, "down")


# --- a dropped session, resumed on a fresh connection: the call goes on ---------------------------


def assert_resumed(trial: Trial, before: int, record: CallRecord) -> None:
    """One resume, and after it the new session hears the caller and the caller hears it."""
    assert record.resumes == 1
    second = trial.rig.fake.sessions[1]
    assert second.audio_in > 0 and second.audio_out > 0
    assert trial.caller.result.frames_received > before
    assert trial.caller.result.close_reason == "caller_stop"
    assert second.is_closed and second.close_code == 1000


@pytest.mark.parametrize("fault", ["stop_reading", "fin_mid_frame"])
async def test_a_dropped_connection_is_resumed_and_the_call_goes_on(fault: str) -> None:
    async with fault_call(provider_proxy={}, seconds=4.0) as trial:
        conn = (await fault_soon(trial)).connections[0]
        before = trial.caller.result.frames_received
        if fault == "stop_reading":
            conn.stop_reading("client")  # the server's frames (its pings too) are not read
        else:
            conn.close_after(50, "down")  # the next provider frame cut after 50 bytes, then FIN
        fault_at = trio.current_time()
        outcome = await trial.ended()
    record = assert_clean_end(outcome, Reason.CALLER_STOP)
    assert_resumed(trial, before, record)
    assert reconnects(outcome.samples, "resumed") == 1
    s = trial.rig.settings
    second = trial.rig.fake.sessions[1]
    assert second.accepted_at is not None
    resumed_after = second.accepted_at - fault_at
    if fault == "stop_reading":
        # Caught by the ping (at most keepalive_interval + pong_timeout), resumed at once. The
        # fake never learns that the first session is gone (nothing it sends is refused): the
        # server's socket to it is closed all the same, as assert_clean_end saw from our fds.
        high = s.keepalive_interval + s.pong_timeout + MARGIN
        assert within(resumed_after, s.pong_timeout - SLACK, high)
    else:
        assert within(resumed_after, 0, MARGIN)  # no ping needed: EOF is news
        assert conn.close_reason is not None and conn.close_reason.startswith("close_after")
        assert trial.rig.fake.sessions[0].is_closed


# --- the path stays broken: the call ends, by the deadline its first drop names -------------------


async def test_blackhole_for_good_upstream_keepalive_timeout() -> None:
    async with fault_call(provider_proxy={}) as trial:
        proxy = await fault_soon(trial)
        proxy.set_idle_blackhole(0)  # every later connection too: no handshake ever answered
        proxy.blackhole()
        fault_at = trio.current_time()
        outcome = await trial.ended()
    s = trial.rig.settings
    assert_clean_end(outcome, Reason.UPSTREAM_KEEPALIVE_TIMEOUT)
    low = s.pong_timeout + s.reconnect_budget
    assert within(outcome.decided_at - fault_at, low - SLACK, s.keepalive_interval + low + MARGIN)
    result = trial.caller.result
    assert (result.close_code, result.close_reason) == (1011, "upstream_keepalive_timeout")
    assert len(proxy.connections) >= 2  # resuming was tried, into the void
    assert len(trial.rig.fake.sessions) == 1  # and never reached the provider
    assert reconnects(outcome.samples, "failed") == 1


async def test_reset_and_every_reconnect_reset_upstream_closed_at_the_budget() -> None:
    async with fault_call(provider_proxy={}) as trial:
        proxy = await fault_soon(trial)
        proxy.close_after(0, reset=True)  # RST now, and every later connection at once
        fault_at = trio.current_time()
        outcome = await trial.ended()
    budget = trial.rig.settings.reconnect_budget
    assert_clean_end(outcome, Reason.UPSTREAM_CLOSED)
    assert within(outcome.decided_at - fault_at, budget - SLACK, budget + MARGIN)
    result = trial.caller.result
    assert (result.close_code, result.close_reason) == (1011, "upstream_closed")
    assert len(proxy.connections) >= 2  # resuming was tried (once only: see the next test)
    assert len(trial.rig.fake.sessions) == 1 and trial.rig.fake.sessions[0].is_closed
    assert reconnects(outcome.samples, "failed") == 1


def cut_handshake_responses(rig: Rig) -> None:
    proxy_of(rig).close_after(40, "down")  # mid status line / headers, then FIN


async def test_every_handshake_response_cut_short_upstream_connect_failed() -> None:
    async with fault_call(provider_proxy={}, prepare=cut_handshake_responses) as trial:
        outcome = await trial.ended()
    s = trial.rig.settings
    record = assert_clean_end(outcome, Reason.UPSTREAM_CONNECT_FAILED)
    assert record.started_at is not None and not record.upstream_opened
    elapsed = outcome.decided_at - record.started_at
    assert within(elapsed, s.connect_timeout - SLACK, s.connect_timeout + MARGIN)
    assert trial.caller.result.close_code == 1011
    assert all(conn.bytes_down == 40 for conn in proxy_of(trial.rig).connections)
    # the fake accepted each handshake, but the server never read a whole response
    assert all(session.is_closed for session in trial.rig.fake.sessions)


def cut_first_handshake(cut: str) -> object:
    def prepare(rig: Rig) -> None:
        if cut == "fin_mid_response":
            cut_handshake_responses(rig)
        else:
            proxy_of(rig).close_after(0, reset=True)

    return prepare


@pytest.mark.parametrize("cut", ["fin_mid_response", "reset_after_connect"])
async def test_a_handshake_cut_once_is_retried_at_once(cut: str) -> None:
    async with fault_call(
        provider_proxy={}, seconds=1.0, prepare=cut_first_handshake(cut)
    ) as trial:
        proxy = proxy_of(trial.rig)
        await (await proxy.wait_for_connection()).wait_closed()
        proxy.close_after(None)  # only the first connection is cut
        outcome = await trial.ended()
    # trio-websocket's own wrap_client_stream would wait out connect_timeout here (the reader's
    # EOF never ends its wait): voxbridge.upstream.connection._open_websocket fails it at once.
    record = assert_clean_end(outcome, Reason.CALLER_STOP)
    assert record.upstream_opened and record.started_at is not None
    assert len(proxy.connections) == 2  # the second attempt went through ...
    session = trial.rig.fake.sessions[-1]
    assert session.accepted_at is not None
    # ... after a backoff pause (at most 0.1 s), not after the whole connect_timeout
    assert within(session.accepted_at - record.started_at, 0, 0.1 + MARGIN)
    assert outcome.reason is Reason.CALLER_STOP
