"""The provider link's policy, on the autojump clock: recycle, resume budget, refusals, keepalive.

Each test is one of the faults the edges issue found on 0.1, with the input that showed it; every
provider socket is the bridge's end of a memory stream wrapped in a :class:`~callkit.Tap`, so the
assertions say what the bridge did with each socket (close frames written, when the stream was
closed) as well as how the call ended and what was counted. The last sections hold faults found in
the link after those fixes: a recycle that fails once the conversation is long, a recycled
session's early audio played out of order, an upkeep that spins on a session lost during its ping,
frozen sessions that prove healthy on probation, and ``aclose`` leaving sockets open when cancelled.
The last section drives a bare link: ``recycle_soon`` (a provider announcing a session's end).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from callkit import ENDPOINT, RIG_BUDGET, Rig, Tap, approx, rig
from trio_websocket import wrap_server_stream

from voxbridge.errors import Reason
from voxbridge.metrics import Metrics
from voxbridge.providers.openai_realtime import OpenAIProvider
from voxbridge.session.link import ProviderLink
from voxbridge.settings import Settings
from voxbridge.testing import FakeEchoAgent, FakeOpenAIRealtime
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


class SlowWrites(Tap):
    """A provider socket whose every write from the bridge waits 50 ms first."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(0.05)  # the fresh session's ping leaves 0.1 s after its handshake
        await super().send_all(data)


# --- fault 2: a recycle whose new session closes before it is set up ----------------------------


async def test_a_recycle_to_a_session_that_closes_at_once_keeps_the_call(autojump_clock):
    # Session max age 30 s: recycles are tried at 30 and, after the failure, 60 s later at 90;
    # each new session is accepted and closed at once. 0.1 kept retrying and leaked host tasks
    # whose shielded wait never ended: the call outlived its end in the registry.
    settings = Settings(session_max_age=30, idle_timeout=1000, keepalive_interval=1000)
    async with rig(settings) as r:
        await r.accept_sim(seconds=100)  # past the second try
        disconnect = await r.run(first_healthy_then(r, closing_after_accept(r)))
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STOP
    assert returned == approx(99.98)  # the caller's stop: nothing held the call open
    r.assert_accounted_once(Reason.CALLER_STOP)
    assert r.connects > 2  # recycling was tried more than once
    assert_every_socket_closed(r)
    first = r.upstream_taps[0]
    assert r.rel(first.closed_at) == approx(99.98)  # the working session carried the call
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
    agent = FakeEchoAgent(delay=0.1, hangup_after=0.05, hangup_code=1008)
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
    agent = FakeEchoAgent(delay=0.1, hangup_after=0.05, hangup_code=1011)
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
    agent = FakeEchoAgent(delay=0.1, hangup_after=2.0, only_session=1)
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
    agent = FakeEchoAgent(
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
    agent = FakeEchoAgent(delay=0.1)
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
    decided = 1.02 + 5  # the first send after 1.005 blocks; send_timeout (re-armed: <= 50 ms late)
    assert decided - 1e-6 <= r.rel(first.closed_at) <= decided + 0.05 + 1e-6
    assert first.close_frames == []
    assert reconnects(r, "resumed") == 1
    r.assert_accounted_once(Reason.CALLER_STOP)
    assert_every_socket_closed(r)


# --- recycling a long conversation ----------------------------------------------------------------


@pytest.mark.parametrize("lines", [10, 40, 100])
async def test_a_recycle_succeeds_with_a_long_conversation(autojump_clock, lines):
    # The first session is recycled at 30 s (make before break) however many transcript lines are
    # replayed. The fresh session answers the history with 2 events per line (GA protocol); unread
    # until the switch, they filled trio-websocket's message queue (64) from about 33 lines on,
    # its reader paused and answered no ping, and every recycle failed on the ping: the first
    # session carried the call to its end. A 55-minute call (what recycling is for) has far more.
    agent = FakeEchoAgent(
        delay=0.1,
        caller_transcripts=[(0.5 + i * 0.1, f"line {i}") for i in range(lines)],
        only_session=1,
    )
    settings = Settings(session_max_age=30, idle_timeout=1000, keepalive_interval=1000)
    async with rig(settings, agent=agent) as r:
        await r.accept_sim(seconds=50)
        disconnect = await r.run()
    assert disconnect.reason is Reason.CALLER_STOP
    assert len(r.registry.recent[0].transcript) == lines
    first = r.upstream_taps[0]
    assert first.close_frames[:1] == [(approx(r.t0 + 30.0), 1000, "recycled")]


async def test_a_recycled_sessions_early_audio_is_played_in_order(autojump_clock):
    # The frames a recycled session sends before the switch are kept (``Session.early``) and come
    # first, to ``receive`` and to the call's coalescing of agent audio alike. When coalescing read
    # the socket directly, an early audio chunk was merged with audio that came after the rest of
    # the early frames, and the caller heard the turn scrambled (1, 2, 27, 28, 29, 30, 3, ...).
    # The fresh session speaks at once (as Ultravox does when the replayed history ends with the
    # caller's words); each write to the caller takes 10 ms, as over a WAN.
    audio = b"".join(bytes([i + 1]) * 160 for i in range(100))  # chunk i is 20 ms of byte i+1
    fake = FakeOpenAIRealtime(echo_delay=None, speak=[(0.0, audio)], speak_pace=5, only_session=2)
    settings = Settings(session_max_age=5, idle_timeout=1000, keepalive_interval=1000)
    async with rig(settings, agent=fake) as r:  # type: ignore[arg-type]
        await r.accept_sim(seconds=12)
        assert r.carrier_tap is not None
        to_caller = r.carrier_tap.send_all

        async def slow_to_caller(data: bytes | bytearray | memoryview) -> None:
            await trio.sleep(0.01)
            await to_caller(data)

        r.carrier_tap.send_all = slow_to_caller  # type: ignore[method-assign]

        async def connect(host: str, port: int) -> trio.abc.Stream:
            r.connects += 1
            client, server = trio.testing.memory_stream_pair()
            r.nursery.start_soon(fake.handle_stream, server)
            tap = (SlowWrites if r.connects == 2 else Tap)(client)
            r.upstream_taps.append(tap)
            return tap

        disconnect = await r.run(connect)
    assert disconnect.reason is Reason.CALLER_STOP
    assert r.upstream_taps[0].close_frames[0][2] == "recycled"
    assert r.sim is not None
    heard: list[int] = []
    for value in bytes(r.sim.result.audio_received):
        if 1 <= value <= 100 and (not heard or heard[-1] != value):
            heard.append(value)
    assert heard == sorted(heard), f"agent audio out of order: {heard[:12]} ..."


# --- probation: a resumed session must answer a ping ----------------------------------------------


@pytest.mark.hang_limit(15)
async def test_upkeep_does_not_spin_after_a_probation_that_ended_during_a_ping(autojump_clock):
    # Session 1 drops at 2.0 and is resumed at once; session 2's probation ends at 2.0 + 2.5.
    # Upkeep pings at 4.0 (pong_timeout 1 s); session 2 freezes at 3.9, and so does the caller's
    # reading (the task reading the provider is then stuck in carrier.send for send_timeout). The
    # lost session's expired probation instant must not wake upkeep again: it did, at once and for
    # ever, freezing the virtual clock at 5.0 (in real time, a 100 % CPU spin). The caller's
    # stalled send ends the call send_timeout after it blocked.
    agent = FakeEchoAgent(delay=0.1, hangup_after=2.0, only_session=1)
    settings = Settings(
        keepalive_interval=1, pong_timeout=1, reconnect_budget=2.5, idle_timeout=1000
    )
    async with rig(settings, agent=agent) as r:
        await r.accept_sim(seconds=20)

        def freeze() -> None:
            agent.sessions[1].stream.stop_reading()
            assert r.carrier_tap is not None
            r.carrier_tap.stop_writing()

        r.at(3.9, freeze)
        disconnect = await r.run()
        returned = r.now()
    assert disconnect.reason is Reason.CALLER_STALLED
    assert returned < 12


async def test_a_provider_that_freezes_every_session_cannot_keep_the_call_alive(autojump_clock):
    # Every session is accepted, answers the opening, then freezes 0.5 s after it opened (reads
    # nothing, answers no ping, never closes); default settings: keepalive 20 s + pong 10 s find
    # each freeze. A session that stayed "up" through its probation without answering a ping has
    # proved nothing: the frozen replacements are never counted resumed and share the first
    # drop's budget, so the call ends upstream_keepalive_timeout about keepalive + pong + budget
    # in. Without the ping each one opened a fresh budget and the call lived until the caller
    # gave up (600 s, 19 sessions counted resumed).
    agent = FakeEchoAgent(delay=0.1, stop_reading_at=0.5)
    async with rig(Settings(), agent=agent) as r:
        await r.accept_sim(seconds=600)
        disconnect = await r.run()
        returned = r.now()
    get = r.metrics.registry.get_sample_value
    resumed = get("voxbridge_upstream_reconnects_total", {"outcome": "resumed"})
    assert resumed == 0, f"{resumed} frozen sessions counted resumed"
    assert disconnect.reason is Reason.UPSTREAM_KEEPALIVE_TIMEOUT
    assert returned < 120


# --- closing --------------------------------------------------------------------------------------


async def test_aclose_under_cancellation_closes_every_socket(autojump_clock):
    # ``aclose`` in a cancelled scope aborts every socket, not just the first: the first abort
    # used to raise Cancelled and leave the rest open, their reader hosts shielded until
    # live_until (the call's hard bound, here 1000 s) and the sockets nursery waiting for them.
    settings = Settings()
    async with rig(settings) as r:
        async with trio.open_nursery() as sockets:
            link = ProviderLink(
                OpenAIProvider.from_settings(ENDPOINT, settings),
                settings=settings,
                metrics=Metrics(),
                nursery=sockets,
                connect_stream=r.connector(),
                history=[],
                call_id="aclose",
                live_until=trio.current_time() + 1000,
            )
            await link.open()
            # two more sockets, as a recycle (or two) in flight would have made
            await link._establish(trio.current_time() + 5, retry=False)
            await link._establish(trio.current_time() + 5, retry=False)
            assert len(link.sockets) == 3
            with trio.CancelScope() as cancelled:
                cancelled.cancel()
                await link.aclose(1000, "bye")
            closing_done = trio.current_time()
            left = len(link.sockets)
        nursery_done = trio.current_time()
    assert left == 0
    assert all(tap.closed_at is not None for tap in r.upstream_taps)
    assert nursery_done - closing_done < 1


# --- recycle_soon: the provider says it will end the session (Gemini's goAway) ------------------


@asynccontextmanager
async def bare_link(r: Rig, connect_stream: StreamConnector) -> AsyncIterator[ProviderLink]:
    """A link with its upkeep and a task reading (and resuming) it, as a call runs them."""
    async with trio.open_nursery() as sockets:
        link = ProviderLink(
            OpenAIProvider.from_settings(ENDPOINT, r.settings),
            settings=r.settings,
            metrics=r.metrics,
            nursery=sockets,
            connect_stream=connect_stream,
            history=[],
            call_id="soon",
            live_until=trio.current_time() + RIG_BUDGET,
        )
        await link.open()

        async def read() -> None:
            while True:
                await link.receive()

        async with trio.open_nursery() as tasks:
            tasks.start_soon(link.upkeep)
            tasks.start_soon(read)
            yield link
            tasks.cancel_scope.cancel()  # as the call's tasks end before it closes its link
        await link.aclose(1000, "bye")
        sockets.cancel_scope.cancel()


QUIET = Settings(idle_timeout=1000, keepalive_interval=1000)  # no pings in the way


async def test_recycle_soon_recycles_now_and_ignores_a_replaced_session(autojump_clock):
    async with rig(QUIET) as r, bare_link(r, r.connector()) as link:
        first = link.session
        assert first is not None
        await trio.sleep(10.0)
        link.recycle_soon(first)
        link.recycle_soon(first)  # said twice: still one recycle
        await trio.sleep(1.0)
        second = link.session
        assert second is not None and second is not first
        assert r.rel(second.upstream.opened_at) == approx(10.0)
        assert r.upstream_taps[0].close_frames == [(approx(r.t0 + 10.0), 1000, "recycled")]
        link.recycle_soon(first)  # a goAway read from the replaced session: nothing happens
        await trio.sleep(100.0)
        assert link.session is second and r.connects == 2
        assert link.sockets == {second.upstream}
    assert reconnects(r, "resumed") == reconnects(r, "failed") == 0


async def test_recycle_soon_after_a_failed_recycle_waits_for_the_retry(autojump_clock):
    # The provider refuses new connections from the start until 20 s. recycle_soon at 10 s: the
    # recycle retries for max(reconnect_budget, 1 s) = 5 s and fails (the old session carries
    # on); the next try waits RECYCLE_RETRY (60 s) from that failure, and then succeeds.
    refusing = True
    attempts: list[float] = []
    async with rig(Settings(idle_timeout=1000, keepalive_interval=1000, reconnect_budget=5)) as r:
        healthy, refused = r.connector(), r.refusing_connector()

        async def connect(host: str, port: int) -> trio.abc.Stream:
            attempts.append(r.now())
            if len(attempts) > 1 and refusing:
                return await refused(host, port)
            return await healthy(host, port)

        async with bare_link(r, connect) as link:
            first = link.session
            assert first is not None
            await trio.sleep(10.0)
            link.recycle_soon(first)
            await trio.sleep(10.0)
            refusing = False
            assert link.session is first  # the failed recycle kept the working session
            await trio.sleep(100.0)
            second = link.session
            assert second is not None and second is not first
    recycle_attempts = attempts[1:]
    assert recycle_attempts[0] == approx(10.0) and len(recycle_attempts) > 3
    assert recycle_attempts[-2] == approx(15.0)  # the last refused one, at the end of its 5 s
    assert recycle_attempts[-1] == approx(15.0 + 60.0)  # RECYCLE_RETRY later
    assert r.rel(second.upstream.opened_at) == approx(75.0)
    assert r.upstream_taps[0].close_frames[0] == (approx(r.t0 + 75.0), 1000, "recycled")
    assert reconnects(r, "resumed") == reconnects(r, "failed") == 0


async def test_a_drop_during_a_recycle_opens_one_replacement(autojump_clock):
    # recycle_soon at 10 s; new connections take 2 s. The provider drops the session at 11 s,
    # before the recycle's connection is made: the resume abandons the recycle (its connection
    # never reaches the provider) and opens the one replacement, at 11 + 2 s. Without that the
    # recycle's session opened at 12 s as well, then was closed as "not needed".
    agent = FakeEchoAgent(delay=0.1, hangup_after=11.0, hangup_code=1011, only_session=1)
    async with rig(QUIET, agent=agent) as r:
        memory = r.connector()

        async def slow(host: str, port: int) -> trio.abc.Stream:
            if r.connects:
                await trio.sleep(2.0)
            return await memory(host, port)

        async with bare_link(r, slow) as link:
            first = link.session
            assert first is not None
            await trio.sleep(10.0)
            link.recycle_soon(first)
            await trio.sleep(10.0)
            second = link.session
            assert second is not None and second is not first
            assert r.rel(second.upstream.opened_at) == approx(13.0)
            assert link.sockets == {second.upstream}
            await trio.sleep(10.0)  # the probation: it is counted resumed
    assert len(agent.sessions) == len(r.upstream_taps) == 2  # the recycle's never connected
    assert reconnects(r, "resumed") == 1 and reconnects(r, "failed") == 0
    assert_every_socket_closed(r)


class VerySlowWrites(Tap):
    """A provider socket whose every write from the bridge takes 1 s."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(1.0)
        await super().send_all(data)


async def test_a_recycle_abandoned_while_its_session_answers_the_ping_closes_it(autojump_clock):
    # Every write to a new session takes 1 s: the recycle that recycle_soon starts at 10 s has
    # its session open at 11 s, its opening frame written at 12 s, and its ping in flight when
    # the provider drops the old session at 12.5 s. The abandoned session is closed then, not
    # left open until the call ends; the resume's session is the only one left.
    agent = FakeEchoAgent(delay=0.1, hangup_after=12.5, hangup_code=1011, only_session=1)
    async with rig(QUIET, agent=agent) as r:

        async def connect(host: str, port: int) -> trio.abc.Stream:
            r.connects += 1
            client, server = trio.testing.memory_stream_pair()
            r.nursery.start_soon(agent.handle_stream, server)
            tap = (Tap if r.connects == 1 else VerySlowWrites)(client)
            r.upstream_taps.append(tap)
            return tap

        async with bare_link(r, connect) as link:
            first = link.session
            assert first is not None
            await trio.sleep(10.0)
            link.recycle_soon(first)
            await trio.sleep(10.0)
            second = link.session
            assert second is not None and second is not first
            assert link.sockets == {second.upstream}
    first_tap, abandoned, resumed = r.upstream_taps
    assert r.rel(abandoned.closed_at) == approx(12.5)
    assert abandoned.close_frames == []  # aborted, no handshake
    assert r.rel(first_tap.closed_at) == approx(12.5)
    assert resumed.closed_at is not None and r.rel(resumed.closed_at) > 20
    assert reconnects(r, "failed") == 0
