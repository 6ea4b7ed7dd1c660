"""A load balancer between voxbridge and its provider that silently drops idle flows, end to end.

Cloud load balancers (an AWS NLB after 350 s, others after as little as 90 s) drop a TCP flow that
carried no byte for a while, without a FIN or a RST: both ends believe the connection is open, and
whatever either sends is lost. Real sockets on loopback: the real server (hypercorn, trio worker),
``voxbridge.testing.FaultProxy`` imitating the load balancer with a short idle window, and the
OpenAI fake behind it. The caller is a hand-driven Twilio stream that can fall silent (a call on
hold: no media frames), which leaves the provider flow idle but for voxbridge's pings.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from test_e2e_server import disconnects, scrape
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from voxbridge.audio import FRAME_BYTES
from voxbridge.carriers.twilio_wire import (
    encode_connected,
    encode_inbound_media,
    encode_start,
    encode_stop,
)
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import FaultProxy
from voxbridge.testing.fake_openai import FakeOpenAIRealtime

BUDGET = 20.0  # seconds of real time per test
STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "1" * 32
ACCOUNT_SID = "AC" + "2" * 32
SILENCE = base64.b64encode(b"\xff" * FRAME_BYTES).decode("ascii")  # 20 ms of mu-law silence


@asynccontextmanager
async def behind_a_load_balancer(
    fake: FakeOpenAIRealtime, idle_window: float, **settings: object
) -> AsyncIterator[tuple[RunningServer, FaultProxy]]:
    """voxbridge -> FaultProxy (``idle_window`` s) -> ``fake``, all on loopback."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        proxy = FaultProxy.for_url(url, idle_blackhole=idle_window)
        await nursery.start(proxy.serve)
        server = await nursery.start(
            lambda task_status: serve(
                Settings(
                    port=0, provider="openai", provider_url=proxy.rewrite_url(url), **settings
                ),  # type: ignore[arg-type]
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield server, proxy
        finally:
            stop.set()
        nursery.cancel_scope.cancel()


class Caller:
    """A Twilio stream driven by hand: talk (20 ms frames in real time), fall silent, hang up."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.sequence = 1
        self.audio_frames = 0  # media frames received from voxbridge
        self.close: tuple[int, str | None] | None = None

    async def start(self) -> None:
        await self.ws.send_message(encode_connected())
        await self.ws.send_message(
            encode_start(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number=self._next())
        )

    async def talk(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.02)):
            chunk = self.sequence
            await self.ws.send_message(
                encode_inbound_media(
                    STREAM_SID, SILENCE, chunk=chunk, timestamp=chunk * 20, sequence_number=chunk
                )
            )
            self.sequence += 1
            await trio.sleep(0.02)

    async def hang_up(self) -> None:
        await self.ws.send_message(
            encode_stop(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number=self._next())
        )

    async def read(self) -> None:
        try:
            while True:
                if '"event":"media"' in (await self.ws.get_message()).replace(" ", ""):
                    self.audio_frames += 1
        except ConnectionClosed as exc:
            self.close = (exc.reason.code, exc.reason.reason)

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1


@asynccontextmanager
async def caller(server: RunningServer) -> AsyncIterator[Caller]:
    """A call on ``server``; on exit, waits for voxbridge to close it (and closes the stream:
    trio-websocket leaves it open when the peer closed first)."""
    parts = urlsplit(server.media_url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, parts.hostname, parts.path)
            call = Caller(ws)
            nursery.start_soon(call.read)
            await call.start()
            yield call
            with trio.fail_after(5):
                while call.close is None:
                    await trio.sleep(0.01)
    finally:
        await trio.aclose_forcefully(stream)


async def test_pings_keep_an_idle_provider_flow_alive_through_a_silence() -> None:
    # The load balancer drops flows idle for 1 s; the caller is silent for 2.5 s; voxbridge pings
    # the provider every 0.2 s. The flow survives, and audio flows again after the silence.
    fake = FakeOpenAIRealtime(echo_delay=0.05)
    with trio.fail_after(BUDGET):
        async with behind_a_load_balancer(
            fake, 1.0, keepalive_interval=0.2, pong_timeout=0.5, idle_timeout=5
        ) as (server, proxy):
            async with caller(server) as call:
                await call.talk(0.4)
                before = call.audio_frames
                await trio.sleep(2.5)  # on hold: no media either way
                await call.talk(0.4)
                await trio.sleep(0.2)
                after = call.audio_frames
                await call.hang_up()
            samples = await scrape(server)
    assert call.close == (1000, "caller_stop")
    assert before > 0 and after > before  # the agent still answers after the silence
    assert len(proxy.connections) == len(fake.sessions) == 1
    assert proxy.connections[0].blackholed_at is None
    assert samples[("voxbridge_upstream_ping_rtt_seconds_count", ())] >= 8
    assert samples[("voxbridge_upstream_reconnects_total", (("outcome", "resumed"),))] == 0
    assert disconnects(samples)["caller_stop"] == 1


async def test_without_pings_the_load_balancer_drops_the_flow() -> None:
    # The control for the test above: pings every 5 s cannot keep a 1 s idle window open.
    fake = FakeOpenAIRealtime(echo_delay=0.05)
    with trio.fail_after(BUDGET):
        async with behind_a_load_balancer(
            fake, 1.0, keepalive_interval=5, pong_timeout=0.5, idle_timeout=5
        ) as (server, proxy):
            async with caller(server) as call:
                await call.talk(0.4)
                await trio.sleep(2.5)
                before = call.audio_frames
                await call.talk(0.4)
                await trio.sleep(0.2)
                after = call.audio_frames
                await call.hang_up()
    assert proxy.connections[0].blackholed_at is not None
    assert after == before  # the caller's audio vanished into the blackhole: no answer


async def test_a_blackholed_flow_is_detected_and_the_session_resumed() -> None:
    # Mid-call the load balancer drops the flow (no FIN, no RST). A missing pong detects it within
    # keepalive_interval + pong_timeout; the dead socket is aborted and a new session opened with
    # the conversation replayed; audio flows again; the resume is counted once it proved healthy.
    fake = FakeOpenAIRealtime(echo_delay=0.05, caller_transcripts=[(0.2, "my order number is 42")])
    interval, pong = 0.3, 0.3
    with trio.fail_after(BUDGET):
        async with behind_a_load_balancer(
            fake, 60.0, keepalive_interval=interval, pong_timeout=pong, reconnect_budget=1
        ) as (server, proxy):
            async with caller(server) as call:
                await call.talk(0.6)
                proxy.blackhole()
                blackholed_at = trio.current_time()
                with trio.fail_after(interval + pong + 1.0):
                    second = await proxy.wait_for_connection(2)
                detected_in = second.opened_at - blackholed_at
                before = call.audio_frames
                await call.talk(1.6)  # past the resumed session's probation (1 s)
                after = call.audio_frames
                await call.hang_up()
            samples = await scrape(server)
    assert call.close == (1000, "caller_stop")
    assert detected_in <= interval + pong + 0.2  # the next ping, its pong deadline, a margin
    first_session, resumed = fake.sessions
    creates = [e for e in resumed.events_in if e["type"] == "conversation.item.create"]
    assert [c["item"]["content"][0]["text"] for c in creates] == ["my order number is 42"]
    assert after > before  # audio flows again
    assert samples[("voxbridge_upstream_reconnects_total", (("outcome", "resumed"),))] == 1
    assert samples[("voxbridge_upstream_reconnects_total", (("outcome", "failed"),))] == 0
    assert disconnects(samples)["caller_stop"] == 1
    # the blackholed session never heard from voxbridge again: it was aborted, not closed
    assert first_session.close_code is None or first_session.close_code == 1006
