"""The provider link's policy, on the autojump clock: recycle, resume budget, refusals, keepalive.

Each test is one of the faults the edges issue found on 0.1, with the input that showed it; every
provider socket is the bridge's end of a memory stream wrapped in a :class:`~callkit.Tap`, so the
assertions say what the bridge did with each socket (close frames written, when the stream was
closed) as well as how the call ended and what was counted.
"""

from __future__ import annotations

import trio
import trio.testing
from callkit import Rig, Tap, approx, rig
from trio_websocket import wrap_server_stream

from voxbridge.errors import Reason
from voxbridge.settings import Settings
from voxbridge.testing import EchoAgent
from voxbridge.upstream import StreamConnector


def reconnects(r: Rig, outcome: str) -> float:
    value = r.metrics.registry.get_sample_value(
        "voxbridge_upstream_reconnects_total", {"outcome": outcome}
    )
    assert value is not None
    return value


def first_healthy_then(r: Rig, later: StreamConnector) -> StreamConnector:
    """The first connection reaches the echo agent; every later one goes to ``later``."""
    healthy = r.connector()

    async def connect(host: str, port: int) -> trio.abc.Stream:
        if r.connects == 0:
            return await healthy(host, port)
        return await later(host, port)

    return connect


def closing_after_accept(r: Rig, code: int = 1011) -> StreamConnector:
    """A provider that accepts the WebSocket and closes it at once, before reading anything."""

    async def serve(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            ws = await request.accept()
            await ws.aclose(code, "closing at once")
            nursery.cancel_scope.cancel()

    async def connect(host: str, port: int) -> trio.abc.Stream:
        r.connects += 1
        client, server = trio.testing.memory_stream_pair()
        r.nursery.start_soon(serve, server)
        tap = Tap(client)
        r.upstream_taps.append(tap)
        return tap

    return connect


def assert_every_socket_closed(r: Rig) -> None:
    assert r.upstream_taps, "no provider socket was opened"
    assert all(tap.closed_at is not None for tap in r.upstream_taps)


# --- fault 2: a recycle whose new session closes before it is set up ----------------------------


async def test_a_recycle_to_a_session_that_closes_at_once_keeps_the_call(autojump_clock):
    # Session max age 30 s: recycles are tried at 30 and, after the failure, 60 s later at 90;
    # each new session is accepted and closed at once. 0.1 kept retrying and leaked host tasks
    # whose shielded wait never ended: the call outlived its end in the registry.
    settings = Settings(session_max_age=30, idle_timeout=1000, keepalive_interval=1000)
    async with rig(settings) as r:
        await r.accept_sim(seconds=200)
        disconnect = await r.run(first_healthy_then(r, closing_after_accept(r)))
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(199.98)  # the caller's stop: nothing held the call open
    r.assert_accounted_once(Reason.CALLER_STOP)
    assert r.connects > 2  # recycling was tried more than once
    assert_every_socket_closed(r)
    first = r.upstream_taps[0]
    assert r.rel(first.closed_at) == approx(199.98)  # the working session carried the call
    assert r.registry.recent[0].frames_from_caller == r.agent.sessions[0].audio_in


# --- fault 3: a failed recycle ended a healthy call, depending on which deadline fired first ------


async def test_a_recycle_whose_session_never_reads_the_opening_never_ends_the_call(autojump_clock):
    for budget in (5, 10):  # 0.1 survived with the default budget and died with 10
        settings = Settings(
            session_max_age=20, reconnect_budget=budget, idle_timeout=1000, keepalive_interval=1000
        )
        async with rig(settings) as r:
            await r.accept_sim(seconds=60)
            stalling = first_healthy_then(r, r.connector(writes_before_stall=1))
            disconnect = await r.run(stalling)
            returned = r.now()
        assert disconnect.reason is Reason.CALLER_STOP, budget
        assert returned == approx(59.98)  # the caller's stop
        r.assert_accounted_once(Reason.CALLER_STOP)
        assert_every_socket_closed(r)
        # every replacement was aborted (its close frame could not have left), none switched to
        assert all(not tap.close_frames for tap in r.upstream_taps[1:])
        assert r.rel(r.upstream_taps[0].closed_at) == approx(59.98)
        assert reconnects(r, "resumed") == reconnects(r, "failed") == 0


# --- fault 4: a provider that accepts every session and drops it ---------------------------------


async def test_a_refusing_close_ends_the_call_at_once(autojump_clock):
    # Every session is accepted, then closed with 1008 (policy: "invalid API key") 50 ms later.
    # 0.1 resumed it 143 times in 8 s of caller audio; a refusal is final.
    agent = EchoAgent(delay=0.1, hangup_after=0.05, hangup_code=1008)
    async with rig(Settings(), agent=agent) as r:
        await r.accept_sim(seconds=8)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_REJECTED
    assert returned == approx(0.05)
    assert r.connects == 1
    assert r.carrier_close == (1011, "upstream_rejected", approx(0.05))
    r.assert_accounted_once(Reason.UPSTREAM_REJECTED)
    assert reconnects(r, "resumed") == 0
    assert_every_socket_closed(r)


async def test_sessions_that_never_prove_healthy_share_one_budget(autojump_clock):
    # The same provider closing with 1011 (resumable) after 50 ms: each resumed session dies on
    # probation, so the budget runs from the first drop and the call ends when it is spent.
    agent = EchoAgent(delay=0.1, hangup_after=0.05, hangup_code=1011)
    async with rig(Settings(reconnect_budget=5), agent=agent) as r:
        await r.accept_sim(seconds=60)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_CLOSED
    assert 5.05 <= returned < 5.05 + 0.1  # first drop at 0.05, + the budget (+ the last attempt)
    assert r.carrier_close[:2] == (1011, "upstream_closed")
    r.assert_accounted_once(Reason.UPSTREAM_CLOSED)
    assert reconnects(r, "resumed") == 0
    assert reconnects(r, "failed") == 1
    assert r.registry.recent[0].resumes == 0
    assert 2 < r.connects < 60  # retried with backoff, not in a tight loop
    assert_every_socket_closed(r)


async def test_a_resumed_session_counts_once_it_proved_healthy(autojump_clock):
    # One drop at 2 s; the replacement is healthy. It is counted `resumed` at the end of its
    # probation (reconnect_budget = 5 s after it opened), not when it opened.
    agent = EchoAgent(delay=0.1, hangup_after=2.0, only_session=1)
    seen: list[float] = []
    async with rig(Settings(reconnect_budget=5), agent=agent) as r:
        await r.accept_sim(seconds=20)

        async def watch() -> None:
            while not seen:
                await trio.sleep(0.5)
                if reconnects(r, "resumed"):
                    seen.append(r.now())

        r.nursery.start_soon(watch)
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    assert seen and 7.0 <= seen[0] <= 7.5  # opened just after 2.0, proved at + 5 s
    assert reconnects(r, "resumed") == 1
    assert r.registry.recent[0].resumes == 1
    assert_every_socket_closed(r)


# --- fault 5: a frozen provider (a load balancer that silently drops the flow) --------------------


async def test_a_missing_pong_aborts_the_socket_and_resumes_with_the_conversation(autojump_clock):
    # The first session freezes at 5.5 s (reads nothing, answers no ping); pings every 1 s with a
    # 1 s pong deadline: decided at the ping at 6 + 1 = 7. 0.1 ended the call, after a close
    # handshake that could not succeed (3.5 s).
    agent = EchoAgent(
        delay=0.1, caller_transcripts=[(1.0, "my order number is 42")], only_session=1
    )
    settings = Settings(keepalive_interval=1, pong_timeout=1, idle_timeout=1000)
    async with rig(settings, agent=agent) as r:
        await r.accept_sim(seconds=15)
        r.at(5.5, lambda: agent.sessions[0].stream.stop_reading())
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP  # the call survived the frozen provider
    first = r.upstream_taps[0]
    assert r.rel(first.closed_at) == approx(7.0)  # aborted the instant the pong was missed
    assert first.close_frames == []  # no close handshake with a peer known dead
    resumed = agent.sessions[1]
    creates = [e for e in resumed.events_in if e["type"] == "conversation.item.create"]
    assert [c["item"]["content"][0]["text"] for c in creates] == ["my order number is 42"]
    assert resumed.audio_in > 0 and r.sim is not None
    assert len(r.sim.result.audio_received) > 0
    assert reconnects(r, "resumed") == 1
    r.assert_accounted_once(Reason.CALLER_STOP)
    assert_every_socket_closed(r)


async def test_a_missing_pong_ends_the_call_only_when_resuming_fails(autojump_clock):
    agent = EchoAgent(delay=0.1)
    settings = Settings(keepalive_interval=1, pong_timeout=1, idle_timeout=1000, reconnect_budget=3)
    async with rig(settings, agent=agent) as r:
        await r.accept_sim(seconds=30)
        r.at(5.5, lambda: agent.sessions[0].stream.stop_reading())
        disconnect = await r.run(first_healthy_then(r, r.refusing_connector()))
        returned = r.now()
    assert disconnect.reason is Reason.UPSTREAM_KEEPALIVE_TIMEOUT
    assert returned == approx(7.0 + 3.0)  # decided at 7, then the whole budget
    assert r.carrier_close == (1011, "upstream_keepalive_timeout", approx(returned))
    assert reconnects(r, "failed") == 1
    r.assert_accounted_once(Reason.UPSTREAM_KEEPALIVE_TIMEOUT)
    assert_every_socket_closed(r)


async def test_a_provider_that_stops_reading_is_resumed_too(autojump_clock):
    settings = Settings(idle_timeout=1000)
    async with rig(settings) as r:
        await r.accept_sim(seconds=20)
        r.at(1.005, lambda: r.upstream_taps[0].stop_writing())
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    first = r.upstream_taps[0]
    decided = 1.02 + 5  # the first send after 1.005 blocks; send_timeout
    assert r.rel(first.closed_at) == approx(decided)
    assert first.close_frames == []
    assert reconnects(r, "resumed") == 1
    r.assert_accounted_once(Reason.CALLER_STOP)
    assert_every_socket_closed(r)
