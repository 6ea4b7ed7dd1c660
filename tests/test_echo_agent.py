"""The product echo agent (``voxbridge.echo_agent.EchoAgent``): what ``--provider echo`` runs.

Over a real loopback socket (``serve`` on port 0) and over memory streams on trio's autojump clock
(``handle_stream``, exact times): the session handshake, the audio played back byte for byte after
the delay and in order, one response per burst, the queue bound, the close the record shows, and
the bounds on a client that goes idle or stops reading. Every server frame is decoded by voxbridge's
own OpenAI codec and validated against the ``openai`` package's ``RealtimeServerEvent``, so the
agent and the codec agree on the protocol. Then the product wiring: ``voxbridge serve`` and
``voxbridge demo`` run this agent, and importing the server does not import ``voxbridge.testing``.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from rich.console import Console
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from voxbridge.audio import tone
from voxbridge.demo import run_demo
from voxbridge.echo_agent import HANDSHAKE_TIMEOUT, SEND_TIMEOUT, EchoAgent
from voxbridge.journal import MemoryJournal
from voxbridge.providers.events import AgentAudio, ResponseDone, ResponseStarted
from voxbridge.providers.openai_realtime import OpenAIRealtimeCodec
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import simulate_call

BUDGET = 10.0  # seconds of real time per loopback test
SERVER = TypeAdapter(RealtimeServerEvent)
#: Five distinct 20 ms mu-law chunks, as the bridge appends them (base64 of Twilio's payload).
AUDIO = [bytes([0x10 + k]) * 160 for k in range(5)]
CHUNKS = [base64.b64encode(audio).decode() for audio in AUDIO]


def checked(frame: str | bytes, codec: OpenAIRealtimeCodec) -> Any:
    """``frame`` validated as a GA server event and decoded by voxbridge's codec."""
    assert isinstance(frame, str), "the agent sends text frames"
    event = json.loads(frame)
    assert SERVER.validate_python(event).type == event["type"]
    assert isinstance(event["event_id"], str) and event["event_id"]
    return codec.decode(frame)


def burst(response: str, item: str, chunks: list[bytes]) -> list[object]:
    """What the codec decodes from one played-back burst."""
    audio = [AgentAudio(chunk, item, response) for chunk in chunks]
    return [ResponseStarted(response), *audio, ResponseDone(response, "completed")]


@asynccontextmanager
async def served(agent: EchoAgent) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(agent.serve)
        yield url
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def in_memory(
    agent: EchoAgent, *, lockstep: bool = False
) -> AsyncIterator[tuple[WebSocketConnection, trio.Event]]:
    """A client WebSocket to ``agent`` over a memory stream pair, and an event set when the
    agent's ``handle_stream`` for it has returned."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client, server = pair()
    returned = trio.Event()

    async def handle() -> None:
        await agent.handle_stream(server)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle)
        ws = await wrap_client_stream(nursery, client, "echo.invalid", "/v1/realtime")
        yield ws, returned
        nursery.cancel_scope.cancel()


# --- over a real loopback socket ------------------------------------------------------------------


async def test_a_session_is_created_updated_and_hears_its_audio_back_after_the_delay() -> None:
    agent = EchoAgent(delay=0.2)
    codec = OpenAIRealtimeCodec()
    with trio.fail_after(BUDGET):
        async with served(agent) as url:
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
            assert agent.endpoint().name == "echo" and agent.endpoint().url == url
            async with open_websocket_url(url) as ws:
                created = await ws.get_message()
                assert json.loads(created)["type"] == "session.created"
                assert checked(created, codec) is None
                await ws.send_message(codec.session_update())
                updated = await ws.get_message()
                session_config = json.loads(updated)["session"]
                assert json.loads(updated)["type"] == "session.updated"
                assert session_config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
                assert session_config["type"] == "realtime"
                assert checked(updated, codec) is None

                sent_at = trio.current_time()
                for chunk in CHUNKS:
                    await ws.send_message(codec.audio(chunk))
                first = await ws.get_message()
                waited = trio.current_time() - sent_at
                rest = [await ws.get_message() for _ in range(len(CHUNKS) + 1)]
                events = [checked(frame, codec) for frame in [first, *rest]]
                await ws.aclose(4001, "caller hung up")
            session = agent.sessions[0]
            with trio.fail_after(5):
                await session.closed.wait()

    assert waited >= 0.2
    assert events == burst("resp_1_1", "item_1_1", AUDIO)
    assert session.is_closed and session.closed_at is not None
    assert session.opened_at <= sent_at <= session.closed_at
    assert (session.close_code, session.close_reason) == (4001, "caller hung up")
    assert (session.frames_in, session.frames_out) == (1 + len(CHUNKS), 2 + len(CHUNKS) + 2)
    assert (session.responses, session.dropped) == (1, 0)


async def test_a_dropped_connection_is_recorded_as_1006() -> None:
    agent = EchoAgent()
    with trio.fail_after(BUDGET):
        async with served(agent) as url:
            host, port = url.removeprefix("ws://").split("/")[0].split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, host, "/v1/realtime")
                await ws.get_message()  # session.created
                await trio.aclose_forcefully(stream)  # no close frame
                nursery.cancel_scope.cancel()
            with trio.fail_after(5):
                await agent.sessions[0].closed.wait()
    assert agent.sessions[0].close_code == 1006


# --- in memory, on the virtual clock --------------------------------------------------------------


async def test_each_burst_is_its_own_response_played_exactly_delay_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent(delay=0.2)
    codec = OpenAIRealtimeCodec()
    heard: list[tuple[float, object]] = []
    async with in_memory(agent) as (ws, _):

        async def hear(frames: int) -> None:
            for _ in range(frames):
                frame = await ws.get_message()
                heard.append((trio.current_time() - t0, checked(frame, codec)))

        await ws.get_message()  # session.created
        t0 = trio.current_time()
        await ws.send_message(codec.audio(CHUNKS[0]))
        await ws.send_message(codec.audio(CHUNKS[1]))
        await hear(4)  # created, two deltas, done
        await trio.sleep_until(t0 + 1.0)  # a pause longer than the delay: a new burst
        await ws.send_message(codec.audio(CHUNKS[2]))
        await hear(3)
        await ws.aclose()
    times = [round(when, 9) for when, _ in heard]
    assert times == [0.2] * 4 + [1.2] * 3
    assert [event for _, event in heard] == (
        burst("resp_1_1", "item_1_1", AUDIO[:2]) + burst("resp_1_2", "item_1_2", AUDIO[2:3])
    )
    assert agent.sessions[0].responses == 2


async def test_other_client_events_are_ignored_and_the_queue_bound_drops_and_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent(delay=1.0, queue=2)
    codec = OpenAIRealtimeCodec(greeting="Hello.")
    ignored = [
        codec.greeting_response("Hello."),  # response.create
        *codec.dtmf("1"),  # conversation.item.create, response.create
        '{"type":"response.cancel"}',
        '{"type":"conversation.item.truncate","item_id":"item_1_1","content_index":0,"audio_end_ms":0}',
        "not json",
        "[1, 2]",
        b"\x00binary",
    ]
    async with in_memory(agent) as (ws, _):
        await ws.get_message()  # session.created
        t0 = trio.current_time()
        for frame in ignored:
            await ws.send_message(frame)
        for chunk in CHUNKS:  # five at once: two wait, three are dropped
            await ws.send_message(codec.audio(chunk))
        frames = [await ws.get_message() for _ in range(4)]
        assert trio.current_time() - t0 == pytest.approx(1.0)
        with trio.move_on_after(10) as quiet:  # nothing else comes
            await ws.get_message()
        assert quiet.cancelled_caught
        await ws.aclose()
    assert [checked(frame, codec) for frame in frames] == burst("resp_1_1", "item_1_1", AUDIO[:2])
    session = agent.sessions[0]
    assert session.dropped == 3
    assert session.frames_in == len(ignored) + len(CHUNKS)


async def test_an_idle_session_is_closed_with_1001_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent(idle_timeout=30.0)
    async with in_memory(agent) as (ws, returned):
        await ws.get_message()  # session.created
        t0 = trio.current_time()
        await ws.send_message(OpenAIRealtimeCodec().session_update())
        await ws.get_message()  # session.updated
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert trio.current_time() - t0 == pytest.approx(30.0)
        await returned.wait()
    assert closed.value.reason is not None and closed.value.reason.code == 1001
    session = agent.sessions[0]
    assert session.close_code == 1001 and session.closed_at == pytest.approx(t0 + 30.0)


async def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A lockstep stream has no buffer: once the client's WebSocket stops taking messages (its
    # queue is full and nobody calls get_message), every write of the agent's blocks.
    agent = EchoAgent(delay=0.0)
    codec = OpenAIRealtimeCodec()
    async with in_memory(agent, lockstep=True) as (ws, returned):
        t0 = trio.current_time()
        for chunk in CHUNKS:
            await ws.send_message(codec.audio(chunk))
        await returned.wait()  # handle_stream returned: no task of the session is left
        ended = trio.current_time() - t0
    session = agent.sessions[0]
    assert ended == pytest.approx(SEND_TIMEOUT)
    assert session.is_closed and session.close_code == 1006
    assert session.close_reason is not None and "send timed out" in session.close_reason


async def test_a_client_that_never_completes_the_handshake_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent()
    client, server = trio.testing.memory_stream_pair()
    t0 = trio.current_time()
    await agent.handle_stream(server)  # the client sends nothing at all
    assert trio.current_time() - t0 == pytest.approx(HANDSHAKE_TIMEOUT)
    assert agent.connections == 1 and not agent.sessions
    assert await client.receive_some() == b""  # the agent closed its end


async def test_a_message_over_the_size_limit_closes_with_1009(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent()
    async with in_memory(agent) as (ws, returned):
        await ws.get_message()  # session.created
        await ws.send_message(OpenAIRealtimeCodec.audio("A" * 2**20))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        await returned.wait()
    assert closed.value.reason is not None and closed.value.reason.code == 1009
    assert agent.sessions[0].close_code == 1009 and agent.sessions[0].frames_in == 0


async def test_a_session_the_agent_is_stopped_in_is_closed_with_no_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent()
    async with in_memory(agent) as (ws, _):
        await ws.get_message()  # session.created
        await ws.send_message(OpenAIRealtimeCodec.audio(CHUNKS[0]))
    # leaving the block cancelled the agent mid-session (as a server shutdown does)
    session = agent.sessions[0]
    assert session.is_closed and session.close_code is None


async def test_the_record_keeps_the_most_recent_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent = EchoAgent(keep=2)
    for _ in range(3):
        async with in_memory(agent) as (ws, returned):
            await ws.get_message()
            await ws.aclose()
            await returned.wait()
    assert [session.number for session in agent.sessions] == [2, 3]
    assert agent.connections == 3


@pytest.mark.parametrize(
    "knobs", [{"delay": -1.0}, {"queue": 0}, {"idle_timeout": 0.0}, {"keep": 0}]
)
def test_bad_knobs_are_refused(knobs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EchoAgent(**knobs)  # type: ignore[arg-type]


def test_endpoint_before_serve_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="serve"):
        EchoAgent().endpoint()


# --- the product runs it --------------------------------------------------------------------------


def test_the_server_does_not_import_voxbridge_testing() -> None:
    code = (
        "import sys, voxbridge.server, voxbridge.server.app, voxbridge.echo_agent\n"
        "print(sorted(m for m in sys.modules if m.startswith('voxbridge.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


async def test_serve_with_provider_echo_runs_the_product_agent() -> None:
    stop = trio.Event()
    settings = Settings(port=0, provider="echo")  # no provider_url: the agent starts in-process
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: RunningServer = await nursery.start(
                lambda task_status: serve(
                    settings,
                    journal=MemoryJournal(),
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            agent = server.app.echo_agent
            assert type(agent) is EchoAgent
            result = await simulate_call(server.media_url, seconds=1.0)
            with trio.fail_after(5):
                await agent.sessions[0].closed.wait()
            stop.set()
    assert result.frames_received > 0
    assert bytes(result.audio_received) == tone(1.0)[: len(result.audio_received)]
    session = agent.sessions[0]
    assert session.close_code == 1000  # the bridge closed its upstream socket normally
    assert session.responses >= 1 and session.dropped == 0


@pytest.mark.hang_limit(60)
async def test_the_demo_sees_every_upstream_socket_closed() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120)
    with trio.fail_after(40):
        status = await run_demo(console, idle_timeout=1.0, seconds=0.5)
    text = out.getvalue()
    assert status == 0, text
    assert "Every upstream socket was closed" in text
    assert "idle_timeout" in text
