"""End to end on real loopback sockets: hypercorn on port 0, real WebSockets both ways.

Each test starts the real server (``voxbridge.server.serve``: tuned listening socket handed to
hypercorn as ``fd://``, the trio worker, the ASGI app) and a ``FakeEchoAgent`` on its own port, places
calls with the Twilio carrier simulator, and checks the outcome from three independent places: what
the caller saw (close code, reason, audio back), what the provider saw (its socket closed, and when),
and what ``/metrics`` says when scraped over HTTP. Timeouts are short and every test has a real-time
budget, so a hang fails fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from voxbridge.errors import Reason
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import FakeEchoAgent, simulate_call

BUDGET = 20.0  # seconds of real time per test


@asynccontextmanager
async def running(
    agent: FakeEchoAgent | None = None, **overrides: Any
) -> AsyncIterator[tuple[RunningServer, FakeEchoAgent]]:
    """A voxbridge server bridged to ``agent`` (started here), torn down on exit; ``overrides``
    are settings (the provider included)."""
    agent = agent or FakeEchoAgent(delay=0.05)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(agent.serve)
        values: dict[str, Any] = {"port": 0, "provider": "echo", "provider_url": url, **overrides}
        settings = Settings(**values)
        server = await nursery.start(
            lambda task_status: serve(settings, shutdown_trigger=stop.wait, task_status=task_status)
        )
        try:
            yield server, agent
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 10
        # serve returns after drain and hypercorn's shutdown; then stop the agent
        nursery.cancel_scope.cancel()


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` over HTTP, parsed with prometheus-client's own text parser."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def disconnects(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "voxbridge_call_disconnects_total"
    }


@asynccontextmanager
async def raw_websocket(url: str) -> AsyncIterator[WebSocketConnection]:
    """A bare client WebSocket whose TCP stream is closed on exit whatever happened.

    (trio-websocket's ``open_websocket_url`` leaves the stream open when the server closed first.)
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    rejected: ConnectionRejected | None = None
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, parts.hostname, parts.path)
            yield ws
            nursery.cancel_scope.cancel()
    except* ConnectionRejected as group:  # raised by the library's reader task
        rejected = group.exceptions[0]  # type: ignore[assignment]
    finally:
        await trio.aclose_forcefully(stream)
    if rejected is not None:
        raise rejected


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_normal_call_round_trips_audio_and_counts_caller_stop() -> None:
    with trio.fail_after(BUDGET):
        async with running() as (server, agent):
            result = await simulate_call(server.media_url, seconds=1.0)
            session = await agent.wait_for_session()
            await wait_until(lambda: session.is_closed)
            samples = await scrape(server)

    assert result.frames_sent == 50
    assert result.frames_received > 0  # the echo came back through the bridge
    # What came back is what was sent (the echo agent plays the caller's audio back verbatim).
    from voxbridge.audio import tone

    sent = tone(1.0)
    assert bytes(result.audio_received) == sent[: len(result.audio_received)]
    assert result.close_code == 1000
    assert result.close_reason == "caller_stop"
    assert session.audio_in == 50
    assert session.close_code == 1000
    assert session.session_updates[0]["session"]["audio"]["input"]["format"] == {
        "type": "audio/pcmu"
    }
    counts = disconnects(samples)
    assert counts["caller_stop"] == 1
    assert sum(counts.values()) == 1
    assert set(counts) == {r.value for r in Reason}  # every reason pre-initialised
    assert samples[("voxbridge_calls_active", ())] == 0
    assert samples[("voxbridge_media_frames_total", (("direction", "to_upstream"),))] == 50
    assert (
        samples[("voxbridge_calls_started_total", (("carrier", "twilio"), ("provider", "echo")))]
        == 1
    )


async def test_stalled_caller_upstream_closed_within_idle_timeout() -> None:
    """The zombie case: the caller goes silent with TCP open and never sends stop."""
    idle = 1.0
    with trio.fail_after(BUDGET):
        async with running(idle_timeout=idle) as (server, agent):
            result = await simulate_call(server.media_url, seconds=30, stall_after=0.3)
            session = await agent.wait_for_session()
            await wait_until(lambda: session.is_closed)
            samples = await scrape(server)

    assert result.last_sent_at is not None and session.closed_at is not None
    teardown = session.closed_at - result.last_sent_at
    assert idle <= teardown <= idle + 1.0
    assert result.close_code == 1000
    assert result.close_reason == "idle_timeout"
    assert session.close_code == 1000
    assert disconnects(samples)["idle_timeout"] == 1
    assert sum(disconnects(samples).values()) == 1


async def test_vanished_caller_upstream_closed() -> None:
    with trio.fail_after(BUDGET):
        async with running(idle_timeout=30) as (server, agent):
            result = await simulate_call(server.media_url, seconds=30, vanish_after=0.3)
            session = await agent.wait_for_session()
            await wait_until(lambda: session.is_closed)
            samples = await scrape(server)

    assert result.last_sent_at is not None and session.closed_at is not None
    assert session.closed_at - result.last_sent_at < 1.0  # not the 30 s idle timeout
    assert disconnects(samples)["caller_closed"] == 1
    assert sum(disconnects(samples).values()) == 1


async def test_upstream_closes_caller_closed_with_1011() -> None:
    with trio.fail_after(BUDGET):
        async with running(FakeEchoAgent(delay=0.05, hangup_after=0.5), reconnect_budget=0) as (
            server,
            agent,
        ):
            result = await simulate_call(server.media_url, seconds=30)
            samples = await scrape(server)

    assert result.close_code == 1011
    assert result.close_reason == "upstream_closed"
    assert agent.sessions[0].close_code == 1011
    assert disconnects(samples)["upstream_closed"] == 1


async def test_start_timeout_over_real_sockets() -> None:
    with trio.fail_after(BUDGET):
        async with running(start_timeout=0.5) as (server, agent):
            async with raw_websocket(server.media_url) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
            samples = await scrape(server)

    assert closed.value.reason.code == 1000
    assert closed.value.reason.reason == "start_timeout"
    assert agent.sessions == []  # never paid for a provider session
    assert disconnects(samples)["start_timeout"] == 1


async def test_malformed_frame_is_protocol_error_1008() -> None:
    with trio.fail_after(BUDGET):
        async with running() as (server, _agent):
            async with raw_websocket(server.media_url) as ws:
                await ws.send_message("{not json")
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
            samples = await scrape(server)

    assert closed.value.reason.code == 1008
    assert disconnects(samples)["protocol_error"] == 1


async def test_health_readiness_twiml_and_unknown_routes() -> None:
    with trio.fail_after(BUDGET):
        async with running(public_url="https://voice.example.com") as (server, _agent):
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
                health = await client.get("/healthz")
                ready = await client.get("/readyz")
                twiml = await client.post("/twilio/voice", data={"CallSid": "CA1"})
                wrong_method = await client.get("/twilio/voice")
                missing = await client.get("/nope")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert twiml.status_code == 200
    assert twiml.headers["content-type"].startswith("text/xml")
    assert '<Stream url="wss://voice.example.com/twilio/media" />' in twiml.text
    assert wrong_method.status_code == 405
    assert missing.status_code == 404


async def test_capacity_rejects_before_upgrade_with_503() -> None:
    with trio.fail_after(BUDGET):
        async with running(max_calls=1) as (server, agent):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: simulate_call(server.media_url, seconds=2.0))
                await agent.wait_for_session()
                async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
                    ready = await client.get("/readyz")
                with pytest.raises(ConnectionRejected) as rejected:
                    async with raw_websocket(server.media_url):
                        pass
            samples = await scrape(server)

    assert ready.status_code == 503
    assert rejected.value.status_code == 503
    assert samples[("voxbridge_connections_rejected_total", (("reason", "capacity"),))] == 1
    assert disconnects(samples)["caller_stop"] == 1


async def test_capacity_holds_when_upgrades_arrive_together() -> None:
    # The check and the call's registration are separated by two awaits (the connect message and
    # the accept): five upgrades at once all passed the check before any call was registered.
    with trio.fail_after(BUDGET):
        async with running(max_calls=1, idle_timeout=2) as (server, _agent):
            outcomes: list[int | None] = []

            async def upgrade() -> None:
                try:
                    async with raw_websocket(server.media_url):
                        outcomes.append(None)  # upgraded
                        await trio.sleep(0.3)
                except ConnectionRejected as exc:
                    outcomes.append(exc.status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(upgrade)
            samples = await scrape(server)
    assert sorted(outcomes, key=str) == [503, 503, 503, 503, None]
    assert samples[("voxbridge_connections_rejected_total", (("reason", "capacity"),))] == 4


async def test_shutdown_drains_then_ends_calls_with_server_shutdown_1001() -> None:
    agent = FakeEchoAgent(delay=0.05)
    stop = trio.Event()
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(agent.serve)
            settings = Settings(port=0, provider="echo", provider_url=url, drain_timeout=0.5)
            server = await nursery.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            results = []

            async def caller() -> None:
                results.append(await simulate_call(server.media_url, seconds=30))

            nursery.start_soon(caller)
            session = await agent.wait_for_session()
            began = trio.current_time()
            stop.set()
            await wait_until(lambda: bool(results), timeout=10)
            ended = trio.current_time()
            nursery.cancel_scope.cancel()

    assert results[0].close_code == 1001
    assert results[0].close_reason == "server_shutdown"
    assert session.close_code == 1001
    assert 0.5 <= ended - began < 0.5 + settings.teardown_timeout
