"""The fake Deepgram Voice Agent over real WebSockets on 127.0.0.1.

What the fake sends is decoded with the production codec (so the fake and the codec agree on the
shapes), and what a client sends is built by it. Times are short real seconds; every test has a
time budget, so a hang fails fast.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest
import trio
import trio.testing
from deepgram.agent.v1.types import (
    AgentV1AgentAudioDone,
    AgentV1AgentStartedSpeaking,
    AgentV1ConversationText,
    AgentV1Error,
    AgentV1FunctionCallRequest,
    AgentV1SettingsApplied,
    AgentV1UserStartedSpeaking,
    AgentV1Welcome,
)
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from voxbridge.providers.deepgram import DeepgramCodec
from voxbridge.providers.events import (
    AgentAudio,
    ProviderError,
    ResponseStarted,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
)
from voxbridge.testing.fake_deepgram import FakeDeepgram, FakeFunctionCall, speech_for
from voxbridge.tools import Tool

BUDGET = 10.0
KEY = "dg-test-key"
LOOKUP = Tool("lookup_order", "Find an order.", {"type": "object", "properties": {}})


@asynccontextmanager
async def served(fake: FakeDeepgram) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        try:
            yield url
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(url: str, key: str | None = KEY) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket that owns its TCP stream and always closes it (trio-websocket's
    ``open_websocket_url`` leaks the socket when the handshake is rejected)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    headers = [(b"Authorization", f"Token {key}".encode())] if key else []
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"{parts.hostname}:{parts.port}",
                parts.path,
                extra_headers=headers,
                message_queue_size=512,
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(0.5):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def connected(
    fake: FakeDeepgram, key: str | None = KEY
) -> AsyncIterator[WebSocketConnection]:
    async with served(fake) as url, client(url, key) as ws:
        yield ws


async def rejection(fake: FakeDeepgram, key: str | None = KEY) -> int:
    """The HTTP status the fake rejected the handshake with (it must reject it)."""
    try:
        async with connected(fake, key):
            pass
    except BaseExceptionGroup as group:
        matched, _ = group.split(ConnectionRejected)
        assert matched is not None, group
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            [leaf] = leaf.exceptions
        assert isinstance(leaf, ConnectionRejected)
        return leaf.status_code
    except ConnectionRejected as exc:
        return exc.status_code
    raise AssertionError("the handshake was accepted")


# The server messages the fake sends (of the SDK's V1SocketClientResponse union; importing that
# module pulls in the deprecated websockets.legacy).
SERVER_MODELS: dict[str, type[pydantic.BaseModel]] = {
    model.model_fields["type"].default: model
    for model in (
        AgentV1AgentAudioDone,
        AgentV1AgentStartedSpeaking,
        AgentV1ConversationText,
        AgentV1Error,
        AgentV1FunctionCallRequest,
        AgentV1SettingsApplied,
        AgentV1UserStartedSpeaking,
        AgentV1Welcome,
    )
}


def assert_sdk_valid(fake: FakeDeepgram) -> None:
    """Every message the fake sent parses as the SDK's server message of its type, with no
    field the SDK does not declare."""
    for session in fake.sessions:
        for message in session.sent:
            model = SERVER_MODELS[message["type"]].model_validate(message)
            assert not model.model_extra, (message, model.model_extra)


def close_code(closed: ConnectionClosed) -> int:
    assert closed.reason is not None
    return closed.reason.code


async def next_message(ws: WebSocketConnection) -> dict[str, Any]:
    """The next text message (binary audio in between is skipped)."""
    while True:
        frame = await ws.get_message()
        if isinstance(frame, str):
            return json.loads(frame)  # type: ignore[no-any-return]


async def events_until(
    ws: WebSocketConnection, codec: DeepgramCodec, last: type, count: int = 1
) -> list[object]:
    """Decoded events (``None`` skipped) until ``count`` events of type ``last`` arrived."""
    events: list[object] = []
    while sum(type(e) is last for e in events) < count:
        event = codec.decode(await ws.get_message())
        if event is not None:
            events.append(event)
    return events


async def opened(ws: WebSocketConnection, codec: DeepgramCodec, history: Any = ()) -> None:
    assert (await next_message(ws))["type"] == "Welcome"
    for frame in codec.opening(list(history), first=not history):
        await ws.send_message(frame)
    assert (await next_message(ws)) == {"type": "SettingsApplied"}


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong", 401)])
async def test_a_missing_or_wrong_token_is_refused_with_401(key: str | None, status: int) -> None:
    fake = FakeDeepgram()
    with trio.fail_after(BUDGET):
        assert await rejection(fake, key) == status
    assert len(fake.refused) == 1 and fake.sessions == []


async def test_refuse_status() -> None:
    fake = FakeDeepgram(refuse_status=503)
    with trio.fail_after(BUDGET):
        assert await rejection(fake) == 503


async def test_settings_greeting_and_echo() -> None:
    fake = FakeDeepgram(echo_delay=0.01, speak_pace=math.inf)
    codec = DeepgramCodec(greeting="Hello!", prompt="be brief", tools=[LOOKUP])
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec)
            events = await events_until(ws, codec, Transcript)
            assert events[0] == ResponseStarted()
            audio = b"".join(e.audio for e in events if isinstance(e, AgentAudio))
            assert audio == speech_for("Hello!")
            assert events[-1] == Transcript("agent", "Hello!")
            await ws.send_message(codec.audio("AAECAw=="))
            echoed = [e for e in await events_until(ws, codec, AgentAudio) if e]
            assert echoed[-1] == AgentAudio(b"\x00\x01\x02\x03")
    session = fake.sessions[0]
    assert session.headers["authorization"] == f"Token {KEY}"
    assert session.path == "/v1/agent/converse"
    assert session.greeting == "Hello!"
    assert session.settings is not None
    assert session.settings["agent"]["think"]["functions"][0]["name"] == "lookup_order"
    assert session.audio_in == 1 and session.audio_bytes_in == 4 and session.audio_out == 1
    assert fake.errors == []


@pytest.mark.parametrize(
    ("first", "problem"),
    [
        ('{"type":"KeepAlive"}', "the first message must be Settings"),
        (b"\xff\xff", "audio before Settings"),
        ("not json", "not a JSON message"),
        (
            json.dumps({"type": "Settings", "audio": {"input": {"encoding": "linear16"}}}),
            "audio.input must be",
        ),
    ],
)
async def test_bad_first_messages_get_an_error_and_a_1008_close(
    first: str | bytes, problem: str
) -> None:
    fake = FakeDeepgram()
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            assert (await next_message(ws))["type"] == "Welcome"
            await ws.send_message(first)
            error = DeepgramCodec().decode(json.dumps(await next_message(ws)))
            assert isinstance(error, ProviderError) and error.code == "INVALID_SETTINGS"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert close_code(closed.value) == 1008
    assert problem in fake.errors[0]
    assert_sdk_valid(fake)


async def test_history_is_recorded_and_no_greeting_on_resume() -> None:
    fake = FakeDeepgram()
    codec = DeepgramCodec(greeting="Hello!")
    history = [Transcript("caller", "order 42"), Transcript("agent", "shipped")]
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec, history)
            await ws.send_message(codec.keepalive.frame)
            for frame in codec.dtmf("5"):
                await ws.send_message(frame)
            events = await events_until(ws, codec, Transcript)
            assert events[-1] == Transcript(
                "agent", "you said: The caller pressed 5 on the keypad."
            )
    session = fake.sessions[0]
    assert session.greeting is None
    assert session.context_messages == [
        {"type": "History", "role": "user", "content": "order 42"},
        {"type": "History", "role": "assistant", "content": "shipped"},
    ]
    assert session.keepalives == 1
    assert session.injected == ["The caller pressed 5 on the keypad."]
    assert_sdk_valid(fake)


async def test_function_call_and_its_response() -> None:
    call = FakeFunctionCall("lookup_order", '{"number":"42"}', at=0.05, say=b"\x11" * 160)
    server_side = FakeFunctionCall("weather", "{}", at=0.01, client_side=False)
    fake = FakeDeepgram(function_calls=[server_side, call], speak_pace=math.inf)
    codec = DeepgramCodec(tools=[LOOKUP])
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec)
            events = await events_until(ws, codec, ToolCall)
            assert events[-1] == ToolCall("fc-1-2", "lookup_order", '{"number":"42"}')
            assert AgentAudio(b"\x11" * 160) in events
            exchange = ToolExchange("fc-1-2", "lookup_order", '{"number":"42"}', '{"ok":true}')
            for frame in codec.tool_result(exchange, known=True):
                await ws.send_message(frame)
            events = await events_until(ws, codec, Transcript)
            assert events[-1] == Transcript("agent", 'lookup_order answered: {"ok":true}')
    session = fake.sessions[0]
    assert session.function_responses[0]["id"] == "fc-1-2"
    assert session.function_calls == {}  # answered
    assert fake.errors == []
    assert_sdk_valid(fake)


async def test_a_response_for_an_unknown_call_is_listed() -> None:
    fake = FakeDeepgram()
    codec = DeepgramCodec()
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec)
            exchange = ToolExchange("nope", "lookup_order", "{}", "{}")
            await ws.send_message(codec.tool_result(exchange, known=True)[0])
            await ws.send_message(codec.keepalive.frame)
            while fake.sessions[0].keepalives == 0:
                await trio.sleep(0.01)
    assert "unknown id 'nope'" in fake.errors[0]


async def test_user_started_speaking_cuts_the_turn() -> None:
    speech = b"\x22" * 8000  # 1 s; at pace 5 it takes 0.2 s
    fake = FakeDeepgram(speak=[(0.0, speech, "a long answer")], user_started_at=[0.1])
    codec = DeepgramCodec()
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec)
            events = await events_until(ws, codec, SpeechStarted)
            assert Transcript("agent", "a long answer") not in events
    session = fake.sessions[0]
    assert session.interrupted == 1
    assert 0 < len(session.agent_audio_out) < len(speech)
    assert {"type": "AgentAudioDone"} not in session.sent
    assert_sdk_valid(fake)


async def test_caller_transcripts_and_errors(autojump_clock: trio.abc.Clock) -> None:
    # in memory, on the virtual clock: the scripted messages (10 and 20 ms after the accept)
    # cannot overtake SettingsApplied on a loaded machine, as they could over real sockets
    fake = FakeDeepgram(
        caller_transcripts=[(0.01, "hello there")], error_at=[(0.02, "SLOW", "think timed out")]
    )
    codec = DeepgramCodec()
    async with in_memory(fake) as ws:
        await opened(ws, codec)
        events = await events_until(ws, codec, ProviderError)
    assert events == [Transcript("caller", "hello there"), ProviderError("SLOW", "think timed out")]
    assert_sdk_valid(fake)


async def test_close_at_drops_only_the_scripted_session() -> None:
    fake = FakeDeepgram(close_at=(0.05, 1011), only_session=1)
    codec = DeepgramCodec()
    with trio.fail_after(BUDGET):
        async with served(fake) as url:
            async with client(url) as ws:
                await opened(ws, codec)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert close_code(closed.value) == 1011
            async with client(url) as ws:
                await opened(ws, codec)
                with trio.move_on_after(0.15):
                    await ws.get_message()
                assert not ws.closed
    assert fake.sessions[0].close_code == 1011
    assert fake.sessions[1].close_code in (None, 1000)


async def test_hangup_at_waits_for_the_speech_due() -> None:
    speech = b"\x33" * 1600  # 0.2 s: 40 ms at pace 5
    fake = FakeDeepgram(speak=[(0.0, speech, "goodbye")], hangup_at=0.01)
    codec = DeepgramCodec()
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec)
            events: list[object] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    event = codec.decode(await ws.get_message())
                    if event is not None:
                        events.append(event)
            assert close_code(closed.value) == 1000
    assert Transcript("agent", "goodbye") in events
    assert bytes(fake.sessions[0].agent_audio_out) == speech
    assert_sdk_valid(fake)


@asynccontextmanager
async def in_memory(fake: FakeDeepgram) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to ``fake`` over a memory stream (for trio's autojump clock: the
    fake's times are exact virtual instants, and no sleep has to guess how long it takes)."""
    with trio.fail_after(BUDGET):  # virtual seconds: a hang fails at once
        async with trio.open_nursery() as nursery:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(fake.handle_stream, server_stream)
            ws = await wrap_client_stream(
                nursery,
                client_stream,
                "agent.deepgram.com",
                "/v1/agent/converse",
                extra_headers=[(b"Authorization", f"Token {KEY}".encode())],
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(0.5):
                    await ws.aclose()
                nursery.cancel_scope.cancel()


async def test_stop_reading_freezes_the_server(autojump_clock: trio.abc.Clock) -> None:
    """Pings every 0.1 s, each given 0.05 s for its pong: answered until the fake stops reading
    at 0.25 s; the one at 0.3 s is not."""
    fake = FakeDeepgram(stop_reading_at=0.25)
    answered = []
    async with in_memory(fake) as ws:
        assert (await next_message(ws))["type"] == "Welcome"
        t0 = fake.sessions[0].accepted_at
        assert t0 is not None
        while True:
            with trio.move_on_after(0.05) as waited:
                await ws.ping()
            if waited.cancelled_caught:
                break
            answered.append(round(trio.current_time() - t0, 6))
            await trio.sleep_until(t0 + 0.1 * (len(answered)))
        assert trio.current_time() - t0 == pytest.approx(0.35)  # the 0.3 s ping, unanswered
    assert answered == [0.0, 0.1, 0.2]


async def test_idle_timeout_closes_a_silent_session_and_keepalive_holds_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``idle_timeout`` 0.2 s: four KeepAlives 0.1 s apart hold the session for 0.4 s; after the
    last one it is closed exactly 0.2 s later."""
    fake = FakeDeepgram(idle_timeout=0.2)
    codec = DeepgramCodec()
    async with in_memory(fake) as ws:
        await opened(ws, codec)
        t0 = trio.current_time()
        for k in range(1, 5):
            await trio.sleep_until(t0 + 0.1 * k)
            await ws.send_message(codec.keepalive.frame)
        events: list[object] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                event = codec.decode(await ws.get_message())
                if event is not None:
                    events.append(event)
        assert close_code(closed.value) == 1011
        assert trio.current_time() - t0 == pytest.approx(0.4 + 0.2)
    assert events == [ProviderError("CLIENT_MESSAGE_TIMEOUT", "no message from the client in time")]
    session = fake.sessions[0]
    assert [at - t0 for at in session.keepalives_at] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert session.keepalives == 4
    assert session.closed_at is not None and session.closed_at - t0 == pytest.approx(0.6)
    assert_sdk_valid(fake)


# --- the fault knobs every fake shares (named as FakeOpenAIRealtime's) ---------------------------


async def test_speech_started_at_is_user_started_speaking_and_cuts_the_turn() -> None:
    speech = b"\x22" * 8000  # 1 s; at pace 5 it takes 0.2 s
    fake = FakeDeepgram(speak=[(0.0, speech, "a long answer")], speech_started_at=[0.1])
    codec = DeepgramCodec()
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, codec)
            events = await events_until(ws, codec, SpeechStarted)
            assert Transcript("agent", "a long answer") not in events
    session = fake.sessions[0]
    assert session.interrupted == 1
    assert {"type": "UserStartedSpeaking"} in session.sent
    assert 0 < len(session.agent_audio_out) < len(speech)
    assert_sdk_valid(fake)


async def test_close_at_sends_close_reason() -> None:
    fake = FakeDeepgram(close_at=(0.05, 1011), close_reason="gone fishing")
    with trio.fail_after(BUDGET):
        async with connected(fake) as ws:
            await opened(ws, DeepgramCodec())
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (1011, "gone fishing")
    assert fake.sessions[0].close_reason == "gone fishing"
