"""The fake OpenAI Realtime service: every event it sends is a real GA server event, every knob works.

Over real loopback TCP (trio-websocket client, each test under a real-time budget), plus one
in-memory run on the autojump clock where pacing is checked to the virtual millisecond. The oracle is
the ``openai`` package: every frame the fake sends validates against
``openai.types.realtime.RealtimeServerEvent`` as the variant its ``type`` names.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from voxbridge.errors import Reason
from voxbridge.providers.events import (
    ProviderError,
    ResponseDone,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Usage,
    dtmf_message,
)
from voxbridge.providers.openai_realtime import OPENAI_MODEL, OpenAIRealtimeCodec
from voxbridge.testing.echo_agent import FakeEchoAgent
from voxbridge.testing.fake_openai import (
    GENERIC_ANSWER,
    SPEECH_BYTES,
    AgentSession,
    FakeOpenAIRealtime,
    FakeToolCall,
    heard_text,
    speech,
    text_answer,
    tool_answer,
)
from voxbridge.tools import END_CALL, Tool

SERVER = TypeAdapter(RealtimeServerEvent)
CLIENT = TypeAdapter(RealtimeClientEvent)
BUDGET = 10.0  # real seconds per test
CODEC = OpenAIRealtimeCodec(voice="marin", instructions="Be brief.")
CHUNK = base64.b64encode(bytes(range(160))).decode()  # 20 ms of mu-law
#: Session configuration fields the service sends that the SDK's request model does not declare.
SESSION_EXTRAS = {"id", "object", "expires_at"}


def extras(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, BaseModel):
        found |= set(value.model_extra or {})
        for name in type(value).model_fields:
            found |= extras(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            found |= extras(item)
    return found


def validated(frame: str | bytes) -> dict[str, Any]:
    """A server frame, checked to be a real GA server event with no field the SDK does not know."""
    assert isinstance(frame, str), "the service sends text frames"
    event = json.loads(frame)
    model = SERVER.validate_python(event)
    assert model.type == event["type"]
    assert extras(model) <= SESSION_EXTRAS, (event["type"], extras(model))
    return event


def validate_all_sent(session: AgentSession) -> None:
    for event in session.events_out:
        validated(json.dumps(event))
    for event in session.events_in:
        CLIENT.validate_python(event)


@asynccontextmanager
async def served(fake: FakeOpenAIRealtime) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        try:
            yield url
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(
    url: str, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket that owns its TCP stream and always closes it.

    (trio-websocket's ``open_websocket_url`` leaves the socket open when the handshake is rejected
    or the peer closes first; the conftest's ``gc.collect()`` would flag that as a leak.)
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, f"{parts.hostname}:{parts.port}", resource, extra_headers=headers
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def rejection(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """The HTTP status the server rejected the handshake with (it must reject it)."""
    try:
        async with connected(url, headers):
            pass
    except BaseExceptionGroup as group:
        matched, _ = group.split(ConnectionRejected)
        assert matched is not None, group
        while isinstance(matched, BaseExceptionGroup):
            [matched] = matched.exceptions
        assert isinstance(matched, ConnectionRejected)
        return matched.status_code
    except ConnectionRejected as exc:
        return exc.status_code
    raise AssertionError("the handshake was accepted")


async def until(ws: WebSocketConnection, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Receive (validating every frame into ``seen``) until an event of ``kind`` arrives."""
    while True:
        event = validated(await ws.get_message())
        seen.append(event)
        if event["type"] == kind:
            return event


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def truncate(item_id: str, audio_end_ms: int) -> str:
    """A client ``conversation.item.truncate``, built here: the fake is checked against the
    ``openai`` package's models, not against the bridge's codec."""
    event = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }
    return json.dumps(event)


# --- the protocol -------------------------------------------------------------------------------


async def test_session_update_history_and_events_in_validate() -> None:
    fake = FakeOpenAIRealtime()
    history = [Transcript("caller", "hi"), Transcript("agent", "hello")]
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url + "?model=gpt-realtime") as ws:
            seen: list[dict[str, Any]] = []
            created = await until(ws, "session.created", seen)
            assert created["session"]["type"] == "realtime"
            for frame in CODEC.opening(history, first=False):
                await ws.send_message(frame)
            updated = await until(ws, "session.updated", seen)
            effective = updated["session"]
            assert effective["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert effective["audio"]["output"] == {
                "format": {"type": "audio/pcmu"},
                "voice": "marin",
                "speed": 1.0,
            }
            assert effective["instructions"] == "Be brief."
            await until(ws, "conversation.item.done", seen)
            added = await until(ws, "conversation.item.added", seen)
            await until(ws, "conversation.item.done", seen)
            assert added["item"]["role"] == "assistant"
            assert added["item"]["content"] == [{"type": "output_text", "text": "hello"}]
            await ws.send_message(CODEC.audio(CHUNK))
            await ws.send_message(truncate("item_nope", 10))
            error = await until(ws, "error", seen)
            assert error["error"]["param"] == "item_id"
        [session] = fake.sessions
        await session.closed.wait()
    assert session.path == "/v1/realtime?model=gpt-realtime"
    assert len(session.session_updates) == 1
    assert [e["item"]["role"] for e in session.items_created] == ["user", "assistant"]
    assert session.truncates == [json.loads(truncate("item_nope", 10))]
    assert session.audio_in == 1 and session.audio_in_bytes == 160
    assert types(session.events_in) == [
        "session.update",
        "conversation.item.create",
        "conversation.item.create",
        "input_audio_buffer.append",
        "conversation.item.truncate",
    ]
    assert session.close_code == 1000
    validate_all_sent(session)


#: What the shut-down beta interface took (``OpenAI-Beta: realtime=v1``): the GA service refuses it.
BETA_SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "turn_detection": {"type": "server_vad"},
        "input_audio_format": "g711_ulaw",
        "output_audio_format": "g711_ulaw",
        "voice": "alloy",
        "modalities": ["text", "audio"],
    },
}
BETA_AGENT_LINE = {
    "type": "conversation.item.create",
    "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}]},
}


async def test_beta_shapes_are_refused_as_the_ga_service_does() -> None:
    fake = FakeOpenAIRealtime()
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            await until(ws, "session.created", seen)
            await ws.send_message(json.dumps(BETA_SESSION_UPDATE))
            error = (await until(ws, "error", seen))["error"]
            assert error["code"] == "missing_required_parameter"
            assert error["param"] == "session.type"
            await ws.send_message(json.dumps(BETA_AGENT_LINE))
            error = (await until(ws, "error", seen))["error"]
            assert (error["code"], error["param"]) == ("invalid_value", "item.content[0].type")
            both = {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text", "audio"]},
            }
            await ws.send_message(json.dumps(both))
            assert (await until(ws, "error", seen))["error"]["param"] == "session.output_modalities"
            stray = {"type": "session.update", "session": {"type": "realtime", "voice": "alloy"}}
            await ws.send_message(json.dumps(stray))
            error = (await until(ws, "error", seen))["error"]
            assert (error["code"], error["param"]) == ("unknown_parameter", "session.voice")
            await ws.send_message('{"type": "input_audio_buffer.commit"}')
            error = (await until(ws, "error", seen))["error"]
            assert error["code"] == "input_audio_buffer_commit_empty"
            await ws.send_message('{"type": "response.cancel"}')
            assert (await until(ws, "error", seen))["error"]["code"] == "response_cancel_not_active"
            await ws.send_message('{"type": "nonsense"}')
            assert (await until(ws, "error", seen))["error"]["param"] == "type"
    assert fake.sessions[0].session_updates and not any(
        e["type"] == "session.updated" for e in seen
    )


# --- echo (the FakeEchoAgent) -----------------------------------------------------------------------


async def test_echo_agent_plays_the_audio_back_after_its_delay() -> None:
    agent = FakeEchoAgent(delay=0.2)
    with trio.fail_after(BUDGET):
        async with served(agent) as url, connected(url) as ws:
            assert agent.endpoint().name == "echo" and agent.endpoint().url == url
            seen: list[dict[str, Any]] = []
            await until(ws, "session.created", seen)
            await ws.send_message(CODEC.opening([], first=True)[0])
            await until(ws, "session.updated", seen)
            sent_at = trio.current_time()
            for _ in range(3):
                await ws.send_message(CODEC.audio(CHUNK))
            deltas = [await until(ws, "response.output_audio.delta", seen) for _ in range(3)]
            assert trio.current_time() - sent_at >= 0.2
            assert [(d["item_id"], d["delta"]) for d in deltas] == [("item_echo", CHUNK)] * 3
            # the echoed item can be truncated, as the bridge does on barge-in
            await ws.send_message(truncate("item_echo", 40))
            truncated = await until(ws, "conversation.item.truncated", seen)
            assert truncated["audio_end_ms"] == 40
        session = await agent.wait_for_session()
        await session.closed.wait()
    assert (session.audio_in, session.audio_out, session.dropped, session.frames_in) == (3, 3, 0, 5)
    assert agent.delay == 0.2 and agent.hangup_after is None and agent.queue == 512
    assert (
        session.is_closed
        and session.closed_at is not None
        and session.opened_at <= session.closed_at
    )
    assert session.ws is not None
    validate_all_sent(session)


async def test_echo_agent_hangs_up_with_its_code() -> None:
    agent = FakeEchoAgent(delay=0.05, hangup_after=0.3, hangup_code=1011)
    with trio.fail_after(BUDGET):
        async with served(agent) as url, connected(url) as ws:
            opened = trio.current_time()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    validated(await ws.get_message())
            assert trio.current_time() - opened == pytest.approx(0.3, abs=0.15)
    assert closed.value.reason is not None and closed.value.reason.code == 1011
    session = agent.sessions[0]
    assert session.close_code == 1011
    assert session.close_reason == "echo agent hangs up (fault knob)"
    assert agent.close_at == (0.3, 1011)


# --- speaking -----------------------------------------------------------------------------------

SPOKEN = bytes(i % 256 for i in range(8000))  # one second of mu-law


async def test_speak_bursts_faster_than_real_time_and_sends_the_audio_exactly() -> None:
    fake = FakeOpenAIRealtime(speak=[(0.1, SPOKEN, "Good morning.")], speak_pace=5.0)
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            done = await until(ws, "response.done", seen)
    deltas = [e for e in seen if e["type"] == "response.output_audio.delta"]
    assert len(deltas) == 50
    assert b"".join(base64.b64decode(d["delta"]) for d in deltas) == SPOKEN
    [record] = fake.sessions[0].responses
    assert record.finished_at is not None
    assert record.finished_at - record.started_at < 0.5  # 1 s of audio at 5x: ~0.2 s
    assert done["response"]["status"] == "completed"
    lifecycle = [t for t in types(seen) if t not in ("response.output_audio.delta",)]
    assert lifecycle == [
        "session.created",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    ids = {(d["response_id"], d["item_id"]) for d in deltas}
    assert ids == {(record.response_id, record.item_id)}
    decoded = [CODEC.decode(json.dumps(e)) for e in seen]
    assert Transcript("agent", "Good morning.") in decoded
    assert done["response"]["output"][0]["content"] == [
        {"type": "output_audio", "transcript": "Good morning."}
    ]
    validate_all_sent(fake.sessions[0])


async def test_speak_pacing_to_the_virtual_millisecond(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(speak=[(1.0, SPOKEN), (1.1, SPOKEN[:800])], speak_pace=4.0)
    client, server = trio.testing.memory_stream_pair()
    arrivals: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.handle_stream, server)
        ws = await wrap_client_stream(nursery, client, "localhost", "/v1/realtime")  # type: ignore[arg-type]
        start = trio.current_time()
        responses = 0
        while responses < 2:
            event = validated(await ws.get_message())
            if event["type"] == "response.output_audio.delta":
                arrivals.append(trio.current_time() - start)
            responses += event["type"] == "response.done"
        await ws.aclose()
    # 20 ms chunks at 4x real time: one every 5 ms; the second turn (due at 1.1) waits for the first
    assert arrivals[0] == pytest.approx(1.0)
    assert arrivals[49] == pytest.approx(1.0 + 49 * 0.005)
    assert arrivals[50] == pytest.approx(1.0 + 50 * 0.005)
    assert len(arrivals) == 55
    assert [r.status for r in fake.sessions[0].responses] == ["completed", "completed"]


async def test_speech_started_cancels_the_turn_and_truncate_checks_the_length() -> None:
    fake = FakeOpenAIRealtime(speak=[(0.0, SPOKEN * 3)], speak_pace=1.0, speech_started_at=[0.3])
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            for _ in range(5):
                await ws.send_message(CODEC.audio(CHUNK))
            started = await until(ws, "input_audio_buffer.speech_started", seen)
            assert CODEC.decode(json.dumps(started)) == SpeechStarted(100)  # 5 x 20 ms heard so far
            done = await until(ws, "response.done", seen)
            assert done["response"]["status"] == "cancelled"
            assert done["response"]["status_details"] == {
                "type": "cancelled",
                "reason": "turn_detected",
            }
            [record] = fake.sessions[0].responses
            assert 0 < record.sent_ms < 3000
            await ws.send_message(truncate(record.item_id, record.sent_ms + 20))
            error = (await until(ws, "error", seen))["error"]
            assert "shorter than" in error["message"]
            await ws.send_message(truncate(record.item_id, 200))
            truncated = await until(ws, "conversation.item.truncated", seen)
            assert (truncated["item_id"], truncated["audio_end_ms"]) == (record.item_id, 200)
    assert [t["audio_end_ms"] for t in fake.sessions[0].truncates] == [record.sent_ms + 20, 200]
    validate_all_sent(fake.sessions[0])


async def test_response_cancel_stops_the_turn() -> None:
    fake = FakeOpenAIRealtime(speak=[(0.0, SPOKEN * 3)], speak_pace=1.0)
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            await until(ws, "response.output_audio.delta", seen)
            await ws.send_message('{"type": "response.cancel"}')
            done = await until(ws, "response.done", seen)
    assert done["response"]["status_details"]["reason"] == "client_cancelled"


async def test_caller_transcripts() -> None:
    fake = FakeOpenAIRealtime(caller_transcripts=[(0.05, "I'd like a loaf."), (0.1, "Thanks.")])
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            kind = "conversation.item.input_audio_transcription.completed"
            first, second = [await until(ws, kind, seen) for _ in range(2)]
    assert [CODEC.decode(json.dumps(e)) for e in (first, second)] == [
        Transcript("caller", "I'd like a loaf."),
        Transcript("caller", "Thanks."),
    ]


# --- fault knobs --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 429, 503])
async def test_refuse_status_rejects_the_handshake(status: int) -> None:
    fake = FakeOpenAIRealtime(refuse_status=status)
    with trio.fail_after(BUDGET):
        async with served(fake) as url:
            assert await rejection(url) == status
    assert fake.sessions == [] and len(fake.refused) == 1 and fake.connections == 1


async def test_api_key_is_checked_and_endpoint_carries_it() -> None:
    fake = FakeOpenAIRealtime(api_key="sk-fake")
    with trio.fail_after(BUDGET):
        async with served(fake) as url:
            assert await rejection(url) == 401
            endpoint = fake.endpoint()
            assert endpoint.name == "openai" and endpoint.url == f"{url}?model={OPENAI_MODEL}"
            assert "sk-fake" not in repr(endpoint)
            headers = [(k.encode(), v.encode()) for k, v in endpoint.headers]
            async with connected(endpoint.url, headers) as ws:
                validated(await ws.get_message())
    assert fake.sessions[0].headers["authorization"] == "Bearer sk-fake"


async def test_handshake_delay_slows_the_accept() -> None:
    fake = FakeOpenAIRealtime(handshake_delay=0.4)
    with trio.fail_after(BUDGET):
        async with served(fake) as url:
            began = trio.current_time()
            async with connected(url) as ws:
                assert trio.current_time() - began >= 0.4
                validated(await ws.get_message())
    session = fake.sessions[0]
    assert session.accepted_at is not None and session.accepted_at - session.opened_at >= 0.4


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4000])
async def test_close_at_closes_with_the_code(code: int) -> None:
    fake = FakeOpenAIRealtime(close_at=(0.2, code))
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    validated(await ws.get_message())
    assert closed.value.reason is not None and closed.value.reason.code == code
    assert fake.sessions[0].close_code == code


async def test_stop_reading_at_means_no_pong() -> None:
    fake = FakeOpenAIRealtime(stop_reading_at=0.1)
    with trio.fail_after(BUDGET):
        async with served(fake) as url:
            with trio.CancelScope() as client:
                async with connected(url) as ws:
                    await ws.ping(b"before")  # answered
                    await trio.sleep(0.2)
                    with trio.move_on_after(0.5) as waited:
                        await ws.ping(b"after")
                    assert waited.cancelled_caught, "a peer that stopped reading answered a ping"
                    client.cancel()  # no close handshake with a peer that does not read
    assert fake.sessions[0].stream._reading is False


async def test_flood_sends_that_many_deltas_at_once() -> None:
    fake = FakeOpenAIRealtime(flood=300)
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            await until(ws, "response.done", seen)
    assert types(seen).count("response.output_audio.delta") == 300
    assert fake.sessions[0].audio_out == 300


async def test_error_at_sends_an_error_event() -> None:
    fake = FakeOpenAIRealtime(error_at=(0.1, "rate_limit_exceeded", "Slow down."))
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            error = await until(ws, "error", [])
    assert CODEC.decode(json.dumps(error)) == ProviderError("rate_limit_exceeded", "Slow down.")


async def test_session_expired_sends_the_error_then_closes_1001() -> None:
    fake = FakeOpenAIRealtime(session_expired_at=0.2)
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            seen: list[dict[str, Any]] = []
            error = await until(ws, "error", seen)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    event = CODEC.decode(json.dumps(error))
    assert isinstance(event, ProviderError) and event.code == "session_expired"
    assert "60 minutes" in event.message
    assert closed.value.reason is not None and closed.value.reason.code == 1001
    assert CODEC.close_reason(1001) is Reason.UPSTREAM_CLOSED
    assert fake.sessions[0].close_code == 1001


async def test_only_session_drops_the_first_and_keeps_the_second() -> None:
    fake = FakeOpenAIRealtime(close_at=(0.1, 1011), speak=[(0.0, SPOKEN[:1600])], only_session=1)
    with trio.fail_after(BUDGET):
        async with served(fake) as url:
            async with connected(url) as ws:
                with pytest.raises(ConnectionClosed):
                    while True:
                        validated(await ws.get_message())
            async with connected(url) as ws:
                seen: list[dict[str, Any]] = []
                await until(ws, "session.created", seen)
                with trio.move_on_after(0.3):
                    await until(ws, "never", seen)
                assert types(seen) == ["session.created"]  # no turn, no close
            second = await fake.wait_for_session(2)
            await second.closed.wait()
    assert fake.sessions[0].close_code == 1011
    assert second.number == 2 and second.close_code == 1000 and second.responses == []


# --- late audio, cancels, corrupt deltas, raw events (in memory, on the autojump clock) ---------


@asynccontextmanager
async def in_memory(fake: FakeOpenAIRealtime) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to ``fake`` over a memory stream pair; closed on exit."""
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.handle_stream, server)
        ws = await wrap_client_stream(nursery, client, "localhost", "/v1/realtime")  # type: ignore[arg-type]
        try:
            yield ws
        finally:
            await ws.aclose()


async def timed_until(
    ws: WebSocketConnection, kind: str, seen: list[tuple[float, dict[str, Any]]]
) -> dict[str, Any]:
    """Like :func:`until`, noting each event's arrival time (``trio.current_time()``)."""
    while True:
        event = validated(await ws.get_message())
        seen.append((trio.current_time(), event))
        if event["type"] == kind:
            return event


def delta_times(seen: list[tuple[float, dict[str, Any]]], t0: float) -> list[float]:
    return [t - t0 for t, e in seen if e["type"] == "response.output_audio.delta"]


async def test_late_chunks_follow_speech_started_at_the_normal_pace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 20 ms chunks at 4x: one every 5 ms from 0.0; speech starts between chunk 20 (0.100) and 21
    fake = FakeOpenAIRealtime(
        speak=[(0.0, SPOKEN)], speak_pace=4.0, speech_started_at=[0.1025], late_chunks=3
    )
    seen: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            done = await timed_until(ws, "response.done", seen)
            session = fake.sessions[0]
            assert session.accepted_at is not None
            t0 = session.accepted_at
            [record] = session.responses
            await ws.send_message(truncate(record.item_id, 480))
            truncated = await timed_until(ws, "conversation.item.truncated", seen)
    started = [t - t0 for t, e in seen if e["type"] == "input_audio_buffer.speech_started"]
    assert started == [pytest.approx(0.1025)]
    times = delta_times(seen, t0)
    assert len(times) == 21 + 3
    assert times[-4:] == pytest.approx([0.100, 0.105, 0.110, 0.115])  # 3 late, at the same pace
    assert [t for t in times if t > 0.1025] == pytest.approx([0.105, 0.110, 0.115])
    items = {e["item_id"] for _, e in seen if e["type"] == "response.output_audio.delta"}
    assert items == {record.item_id}
    done_at = next(t for t, e in seen if e["type"] == "response.output_audio.done") - t0
    assert done_at == pytest.approx(0.115)  # the .done events right after the last late chunk
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert (record.status, record.reason, record.deltas, record.late_deltas) == (
        "cancelled",
        "turn_detected",
        24,
        3,
    )
    assert record.cancelled_at is not None and record.cancelled_at - t0 == pytest.approx(0.1025)
    assert record.sent_bytes == 24 * 160 and record.sent_ms == 480
    assert truncated["audio_end_ms"] == 480  # the late audio counts as sent: truncatable
    validate_all_sent(session)


async def test_without_late_chunks_a_cancelled_turn_stops_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(speak=[(0.0, SPOKEN)], speak_pace=4.0, speech_started_at=[0.1025])
    seen: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await timed_until(ws, "response.done", seen)
    t0 = fake.sessions[0].accepted_at
    assert t0 is not None
    assert len(delta_times(seen, t0)) == 21
    done_at = next(t for t, e in seen if e["type"] == "response.output_audio.done") - t0
    assert done_at == pytest.approx(0.1025)
    assert fake.sessions[0].responses[0].late_deltas == 0


async def test_late_chunks_after_a_client_cancel_then_truncate_at_zero(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(speak=[(0.0, SPOKEN)], speak_pace=4.0, late_chunks=2)
    seen: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            created = await timed_until(ws, "response.created", seen)
            response_id = created["response"]["id"]
            for _ in range(5):  # chunks 0..4, the last at 0.020
                await timed_until(ws, "response.output_audio.delta", seen)
            cancel = {"type": "response.cancel", "response_id": response_id}
            await ws.send_message(json.dumps(cancel))
            done = await timed_until(ws, "response.done", seen)
            [record] = fake.sessions[0].responses
            await ws.send_message(truncate(record.item_id, 0))
            truncated = await timed_until(ws, "conversation.item.truncated", seen)
            await ws.send_message(json.dumps(cancel))  # the response is over
            error = (await timed_until(ws, "error", seen))["error"]
    t0 = fake.sessions[0].accepted_at
    assert t0 is not None
    assert delta_times(seen, t0) == pytest.approx([0.0, 0.005, 0.010, 0.015, 0.020, 0.025, 0.030])
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert (record.deltas, record.late_deltas, record.sent_ms) == (7, 2, 140)
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (record.item_id, 0)
    assert fake.sessions[0].items[record.item_id] == 0
    assert (error["code"], error["param"]) == ("response_cancel_not_active", "response_id")
    validate_all_sent(fake.sessions[0])


async def test_response_cancel_naming_another_response_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(speak=[(0.0, SPOKEN)], speak_pace=4.0)
    seen: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await timed_until(ws, "response.output_audio.delta", seen)
            stray = {"type": "response.cancel", "event_id": "evt_c1", "response_id": "resp_nope"}
            await ws.send_message(json.dumps(stray))
            error = (await timed_until(ws, "error", seen))["error"]
            done = await timed_until(ws, "response.done", seen)
            [record] = fake.sessions[0].responses
            await ws.send_message(truncate(record.item_id, 0))  # a completed item, at 0
            truncated = await timed_until(ws, "conversation.item.truncated", seen)
    assert error == {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found.",
        "param": "response_id",
        "event_id": "evt_c1",
    }
    assert done["response"]["status"] == "completed" and record.reason is None
    assert record.deltas == 50 and record.cancelled_at is None
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (record.item_id, 0)
    assert fake.sessions[0].items[record.item_id] == 0
    validate_all_sent(fake.sessions[0])


async def test_corrupt_deltas_count_turn_and_echo_deltas_and_records_keep_the_real_audio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turn = bytes(range(160)) * 5  # 100 ms: deltas 1..5; the echo's are 6..8
    fake = FakeOpenAIRealtime(
        speak=[(0.0, turn)], echo_delay=0.05, corrupt_deltas={2: "QUJ", 7: "@@@@"}
    )
    seen: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await timed_until(ws, "response.done", seen)
            for _ in range(3):
                await ws.send_message(CODEC.audio(CHUNK))
            for _ in range(3):
                await timed_until(ws, "response.output_audio.delta", seen)
    session = fake.sessions[0]
    [record] = session.responses
    real = base64.b64encode(turn[:160]).decode()
    deltas = [e["delta"] for _, e in seen if e["type"] == "response.output_audio.delta"]
    assert deltas == [real, "QUJ", real, real, real, CHUNK, "@@@@", CHUNK]
    assert session.corrupted == [(2, record.item_id), (7, "item_echo")]
    # the fake believes it sent the real audio
    assert (record.sent_bytes, record.deltas, record.status) == (800, 5, "completed")
    assert session.items[record.item_id] == 100 and session.items["item_echo"] == 60
    assert session.audio_out == 8
    validate_all_sent(session)


async def test_corrupt_deltas_respect_only_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(echo_delay=0.0, corrupt_deltas={1: "@@@@"}, only_session=2)
    got: list[str] = []
    with trio.fail_after(BUDGET):
        for _ in range(2):
            async with in_memory(fake) as ws:
                await ws.send_message(CODEC.audio(CHUNK))
                got.append((await until(ws, "response.output_audio.delta", []))["delta"])
    assert got == [CHUNK, "@@@@"]
    assert [s.corrupted for s in fake.sessions] == [[], [(1, "item_echo")]]


def test_fault_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="late_chunks"):
        FakeOpenAIRealtime(late_chunks=-1)
    with pytest.raises(ValueError, match="from 1"):
        FakeOpenAIRealtime(corrupt_deltas={0: "@@@@"})


async def test_events_at_sends_raw_events_as_given(
    autojump_clock: trio.testing.MockClock,
) -> None:
    late = {
        "type": "response.output_audio.delta",
        "response_id": "resp_old",
        "item_id": "item_old",
        "output_index": 0,
        "content_index": 0,
        "delta": "AAAA",
    }
    novel = {"type": "session.something_new", "event_id": "evt_mine", "x": [1, {"y": None}]}
    fake = FakeOpenAIRealtime(events_at=[(0.5, late), (0.25, novel)])
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            while len(arrivals) < 3:
                event = json.loads(await ws.get_message())
                arrivals.append((trio.current_time(), event))
    t0 = fake.sessions[0].accepted_at
    assert t0 is not None
    (_, created), (at_novel, got_novel), (at_late, got_late) = arrivals
    assert created["type"] == "session.created"
    assert (at_novel - t0, got_novel) == (0.25, novel)
    assert at_late - t0 == 0.5
    assert got_late == {**late, "event_id": got_late["event_id"]}
    assert got_late["event_id"].startswith("event_1_")
    assert "event_id" not in late  # the caller's dict is left as it was
    assert fake.sessions[0].events_out[1:] == [novel, got_late]


# --- tools, key presses, greetings, usage -------------------------------------------------------

WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
GREETING = "Welcome to Acme."
LET_ME_CHECK = speech("Let me check.")


def spoken(events: list[dict[str, Any]], response_id: str) -> bytes:
    """The audio of one response, as the client received it."""
    return b"".join(
        base64.b64decode(e["delta"])
        for e in events
        if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
    )


def decoded(codec: OpenAIRealtimeCodec, events: list[dict[str, Any]]) -> list[Any]:
    return [codec.decode(json.dumps(event)) for event in events]


def test_speech_is_deterministic_and_readable_back() -> None:
    assert speech("Hi") == b"H" * SPEECH_BYTES + b"i" * SPEECH_BYTES
    assert SPEECH_BYTES == 16 and len(speech("Oslo ✓")) == 16 * len("Oslo ✓".encode())
    assert heard_text(speech('The result is {"c":-3} ✓')) == 'The result is {"c":-3} ✓'
    assert heard_text(speech("abc")[:40]) == "abc"[:3]  # cut short: what was heard, rounded up
    assert b"\xff" not in speech("any text ✓ at all")  # never mu-law silence
    assert tool_answer('{"c":-3}') == 'The result is {"c":-3}'
    assert text_answer("The caller pressed 1 on the keypad.") == (
        "Noted: The caller pressed 1 on the keypad."
    )
    assert (
        FakeToolCall("f", {"b": 1, "a": [True, None]}).arguments_text == '{"b":1,"a":[true,null]}'
    )
    assert FakeToolCall("f", "{not json").arguments_text == "{not json"
    assert FakeToolCall("f").arguments_text == "{}"
    with pytest.raises(ValueError, match="after_turn"):
        FakeOpenAIRealtime(tool_calls=[FakeToolCall("f", after_turn=0)])


async def test_a_whole_agent_conversation_over_a_real_socket() -> None:
    """Greeting, a tool call after the caller's turn, its result answered, a key press answered:
    every frame the bridge's codec builds is accepted, every answer is exact, and the usage the
    codec decodes sums to the fake's own totals."""
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(0.5, "What's the weather in Oslo?")],
        tool_calls=[
            FakeToolCall(
                "get_weather", {"city": "Oslo"}, say=LET_ME_CHECK, transcript="Let me check."
            )
        ],
    )
    codec = OpenAIRealtimeCodec(voice="marin", tools=[WEATHER], greeting=GREETING)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(BUDGET):
        async with served(fake) as url, connected(url) as ws:
            await until(ws, "session.created", seen)
            for frame in codec.opening([], first=True):
                await ws.send_message(frame)
            updated = await until(ws, "session.updated", seen)
            assert [t["name"] for t in updated["session"]["tools"]] == ["get_weather"]
            assert updated["session"]["tool_choice"] == "auto"
            greeted = await until(ws, "response.done", seen)
            assert spoken(seen, greeted["response"]["id"]) == speech(GREETING)

            called = await until(ws, "response.done", seen)
            event = codec.decode(json.dumps(called))
            assert isinstance(event, ResponseDone) and event.status == "completed"
            [call] = event.tool_calls
            assert call == ToolCall("call_1_1", "get_weather", '{"city":"Oslo"}')
            assert spoken(seen, called["response"]["id"]) == LET_ME_CHECK

            exchange = ToolExchange(call.call_id, call.name, call.arguments, '{"celsius":-3}')
            for frame in codec.tool_result(exchange, known=True):
                await ws.send_message(frame)
            answered = await until(ws, "response.done", seen)
            heard = spoken(seen, answered["response"]["id"])
            assert heard == speech('The result is {"celsius":-3}')
            assert heard_text(heard) == tool_answer('{"celsius":-3}')

            for frame in codec.dtmf("12#"):
                await ws.send_message(frame)
            noted = await until(ws, "response.done", seen)
            assert heard_text(spoken(seen, noted["response"]["id"])) == text_answer(
                dtmf_message("12#")
            )
        session = fake.sessions[0]
        await session.closed.wait()
    assert fake.greetings == session.greetings == [GREETING]
    assert fake.tool_outputs == session.tool_outputs == [("call_1_1", '{"celsius":-3}')]
    assert fake.user_texts == session.user_texts == ["The caller pressed 1 2 # on the keypad."]
    assert [r.trigger for r in session.responses] == [
        "greeting",
        "tool_call",
        "tool_answer",
        "text_answer",
    ]
    assert [r.status for r in session.responses] == ["completed"] * 4
    events = decoded(codec, seen)
    transcripts = [e.text for e in events if isinstance(e, Transcript)]
    assert transcripts == [
        GREETING,
        "What's the weather in Oslo?",
        "Let me check.",
        tool_answer('{"celsius":-3}'),
        text_answer(dtmf_message("12#")),
    ]
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert [len(e.tool_calls) for e in done] == [0, 1, 0, 0]
    metered: dict[str, float] = {}
    for e in done:
        assert e.usage is not None
        for kind, amount in e.usage.counts:
            metered[kind] = metered.get(kind, 0) + amount
    assert metered == fake.usage_totals()
    assert set(metered) == {
        "input_text_tokens",
        "input_cached_tokens",
        "output_text_tokens",
        "output_audio_tokens",
    }  # no caller audio was sent: no input audio tokens
    validate_all_sent(session)


async def test_the_tool_call_response_as_the_service_streams_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(1.0, "weather?")],
        tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"}, call_id="call_abc")],
    )
    codec = OpenAIRealtimeCodec(tools=[WEATHER])
    seen: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await ws.send_message(codec.session_update())
            done = await timed_until(ws, "response.done", seen)
    [record] = fake.sessions[0].responses
    call = record.function_call
    assert call is not None and call.sent and not record.message
    assert (record.trigger, record.item_id, record.sent_bytes) == ("tool_call", call.item_id, 0)
    events = [e for _, e in seen]
    start = types(events).index("response.created")
    assert types(events)[start:] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    arguments_done = events[start + 4]
    assert arguments_done == {
        "type": "response.function_call_arguments.done",
        "event_id": arguments_done["event_id"],
        "response_id": record.response_id,
        "output_index": 0,
        "item_id": call.item_id,
        "call_id": "call_abc",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert done["response"]["output"] == [
        {
            "id": call.item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "name": "get_weather",
            "call_id": "call_abc",
            "arguments": '{"city":"Oslo"}',
        }
    ]
    assert seen[start][0] == 1.0  # right after the caller's turn
    assert "call_abc" in fake.sessions[0].call_ids
    validate_all_sent(fake.sessions[0])


async def test_tool_calls_follow_their_turns_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(1.0, "first"), (2.0, "second")],
        tool_calls=[
            FakeToolCall("get_weather", {"city": "B"}, after_turn=2),
            FakeToolCall("get_weather", {"city": "A1"}),
            FakeToolCall("end_call", say=speech("Bye."), transcript="Bye."),
        ],
    )
    codec = OpenAIRealtimeCodec(tools=[WEATHER, END_CALL])
    calls: list[tuple[float, ToolCall]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await ws.send_message(codec.session_update())
            while len(calls) < 3:
                event = codec.decode(json.dumps(validated(await ws.get_message())))
                if isinstance(event, ResponseDone):
                    calls.extend((trio.current_time(), call) for call in event.tool_calls)
    t0 = fake.sessions[0].accepted_at
    assert t0 is not None
    assert [(at - t0, call.name, call.arguments) for at, call in calls] == [
        (1.0, "get_weather", '{"city":"A1"}'),
        (pytest.approx(1.004), "end_call", "{}"),  # after one 20 ms chunk ("Bye.") at 5x
        (2.0, "get_weather", '{"city":"B"}'),
    ]
    assert [call.call_id for _, call in calls] == ["call_1_1", "call_1_2", "call_1_3"]
    assert [r.message for r in fake.sessions[0].responses] == [False, True, False]


async def test_an_undeclared_tool_is_an_error_not_a_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(1.0, "weather?")], tool_calls=[FakeToolCall("get_weather")]
    )
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await ws.send_message(CODEC.session_update())  # no tools declared
            error = (await until(ws, "error", []))["error"]
    assert (error["code"], error["param"]) == ("tool_not_declared", "session.tools")
    assert "get_weather" in error["message"]
    assert fake.sessions[0].responses == []
    assert CODEC.decode(json.dumps({"type": "error", "error": error})) == ProviderError(
        "tool_not_declared", error["message"]
    )


async def test_speech_started_during_the_words_cancels_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(1.0, "weather?")],
        tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"}, say=bytes(8000))],
        speech_started_at=[1.05],
        speak_pace=1.0,
    )
    codec = OpenAIRealtimeCodec(tools=[WEATHER])
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await ws.send_message(codec.session_update())
            done = await until(ws, "response.done", [])
    assert codec.decode(json.dumps(done)) == ResponseDone(
        done["response"]["id"],
        "cancelled",
        (),
        Usage((("output_audio_tokens", 4),)),
    )
    assert [item["type"] for item in done["response"]["output"]] == ["message"]
    [record] = fake.sessions[0].responses
    assert record.function_call is not None and not record.function_call.sent
    assert record.function_call.call_id not in fake.sessions[0].call_ids
    assert record.status == "cancelled" and record.sent_bytes == 3 * 160


async def test_a_tool_result_needs_its_call_in_the_conversation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A resumed session never saw the call: the output alone is refused, as by the service;
    the call replayed first (``known=False``) is answered."""
    exchange = ToolExchange("call_old", "get_weather", '{"city":"Oslo"}', '"sunny"')
    seen: list[dict[str, Any]] = []
    with trio.fail_after(BUDGET):
        fake = FakeOpenAIRealtime()
        async with in_memory(fake) as ws:
            for frame in CODEC.tool_result(exchange, known=True):
                await ws.send_message(frame)
            error = (await until(ws, "error", seen))["error"]
            generic = await until(ws, "response.done", seen)  # the create is answered anyway
            for frame in CODEC.tool_result(exchange, known=False):
                await ws.send_message(frame)
            answered = await until(ws, "response.done", seen)
    assert error["param"] == "item.call_id"
    assert error["message"] == (
        "No tool call found for function call output with call_id call_old."
    )
    assert heard_text(spoken(seen, generic["response"]["id"])) == GENERIC_ANSWER
    assert heard_text(spoken(seen, answered["response"]["id"])) == 'The result is "sunny"'
    session = fake.sessions[0]
    assert session.tool_outputs == [("call_old", '"sunny"')]
    assert [r.trigger for r in session.responses] == ["generic", "tool_answer"]
    assert [e["item"]["type"] for e in session.items_created] == [
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    validate_all_sent(session)


async def test_a_response_create_while_one_is_active_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeOpenAIRealtime(speak=[(0.0, SPOKEN)], speak_pace=1.0)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            created = await until(ws, "response.created", seen)
            for frame in CODEC.dtmf("5"):
                await ws.send_message(frame)
            error = await until(ws, "error", seen)
            await until(ws, "response.done", seen)
            for frame in CODEC.dtmf("6"):  # the response is over: now it is answered
                await ws.send_message(frame)
            noted = await until(ws, "response.done", seen)
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert created["response"]["id"] in error["error"]["message"]
    assert CODEC.decode(json.dumps(error)) is None  # the expected race: not a provider error
    assert fake.user_texts == [dtmf_message("6")]  # "5" was never answered
    assert heard_text(spoken(seen, noted["response"]["id"])) == text_answer(dtmf_message("6"))
    validate_all_sent(fake.sessions[0])


async def test_usage_follows_the_documented_rule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """input text: client text bytes // 4; input audio: caller bytes // 100; cached: the previous
    response's input; output text: transcript bytes // 4; output audio: bytes sent // 100."""
    fake = FakeOpenAIRealtime()
    seen: list[dict[str, Any]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            for _ in range(5):
                await ws.send_message(CODEC.audio(CHUNK))  # 800 bytes of caller audio
            for frame in CODEC.dtmf("1"):
                await ws.send_message(frame)
            first = await until(ws, "response.done", seen)
            for frame in CODEC.dtmf("2"):
                await ws.send_message(frame)
            second = await until(ws, "response.done", seen)
    message = dtmf_message("1")  # 35 bytes; the second is as long
    said = text_answer(message)  # 42 bytes
    assert (len(message.encode()), len(said.encode()), len(speech(said))) == (35, 42, 672)
    assert first["response"]["usage"] == {
        "total_tokens": 8 + 8 + 10 + 6,
        "input_tokens": 8 + 8,
        "output_tokens": 10 + 6,
        "input_token_details": {"text_tokens": 8, "audio_tokens": 8, "cached_tokens": 0},
        "output_token_details": {"text_tokens": 10, "audio_tokens": 6},
    }
    assert second["response"]["usage"]["input_token_details"] == {
        "text_tokens": 17,  # 70 bytes
        "audio_tokens": 8,
        "cached_tokens": 16,  # the first's input
    }
    assert [r.usage for r in fake.sessions[0].responses] == [
        {
            "input_text_tokens": 8,
            "input_audio_tokens": 8,
            "input_cached_tokens": 0,
            "output_text_tokens": 10,
            "output_audio_tokens": 6,
        },
        {
            "input_text_tokens": 17,
            "input_audio_tokens": 8,
            "input_cached_tokens": 16,
            "output_text_tokens": 10,
            "output_audio_tokens": 6,
        },
    ]
    assert fake.usage_totals() == {
        "input_text_tokens": 25,
        "input_audio_tokens": 16,
        "input_cached_tokens": 16,
        "output_text_tokens": 20,
        "output_audio_tokens": 12,
    }


async def test_a_greeting_of_any_prompt_is_spoken(autojump_clock: trio.testing.MockClock) -> None:
    """The fake reads voxbridge's greeting prompt; any other instructions are said as they are."""
    fake = FakeOpenAIRealtime()
    seen: list[dict[str, Any]] = []
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            greet = OpenAIRealtimeCodec(greeting="Hello, caller.").opening([], first=True)[1]
            await ws.send_message(greet)
            first = await until(ws, "response.done", seen)
            other = {"type": "response.create", "response": {"instructions": "Say hi."}}
            await ws.send_message(json.dumps(other))
            second = await until(ws, "response.done", seen)
            await ws.send_message('{"type": "response.create", "response": 5}')
            error = (await until(ws, "error", seen))["error"]
    assert fake.greetings == ["Hello, caller.", "Say hi."]
    assert heard_text(spoken(seen, first["response"]["id"])) == "Hello, caller."
    assert heard_text(spoken(seen, second["response"]["id"])) == "Say hi."
    assert first["response"]["output"][0]["content"] == [
        {"type": "output_audio", "transcript": "Hello, caller."}
    ]
    assert (error["code"], error["param"]) == ("invalid_type", "response")
    for event in fake.sessions[0].events_out:
        validated(json.dumps(event))


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ("get_weather", "session.tools"),
        ([{"type": "function", "name": "get weather"}], "session.tools[0].name"),
        ([{"type": "function"}], "session.tools[0].name"),
        ([{"type": "function", "name": "a" * 65}], "session.tools[0].name"),
        (
            [{"type": "function", "name": "f"}, {"type": "function", "name": "f"}],
            "session.tools[1].name",
        ),
        ([{"type": "code", "name": "f"}], "session.tools[0].type"),
        ([{"type": "function", "name": "f", "parameters": "{}"}], "session.tools[0].parameters"),
    ],
)
async def test_bad_tool_declarations_are_refused(
    autojump_clock: trio.testing.MockClock, tools: Any, param: str
) -> None:
    fake = FakeOpenAIRealtime()
    update = {"type": "session.update", "session": {"type": "realtime", "tools": tools}}
    with trio.fail_after(BUDGET):
        async with in_memory(fake) as ws:
            await ws.send_message(json.dumps(update))
            error = (await until(ws, "error", []))["error"]
    assert error["param"] == param
    assert fake.sessions[0].config["tools"] == []  # nothing applied
