"""The fake Gemini Live over real loopback sockets (trio-websocket client, each test under a
real-time budget): the key check, setup, echo at 24 kHz, scripted speech with transcripts, usage
and resumption handles, interruptions, tool calls, goAway, resumption and the fault knobs. The
frames the client sends are built by the real codec."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from pytest import approx
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from voxbridge.errors import Reason
from voxbridge.providers.events import AgentAudio, SpeechStarted, ToolCall, ToolExchange, Transcript
from voxbridge.providers.gemini import GREETING_PROMPT, GeminiCodec, Resumption
from voxbridge.testing.fake_gemini import FakeGemini, FakeToolCall, Speech

BUDGET = 5.0  # real seconds
SILENCE_20MS = base64.b64encode(b"\x7f" * 160).decode()


@asynccontextmanager
async def served(fake: FakeGemini) -> AsyncIterator[str]:
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            yield fake.endpoint().url
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket that owns its TCP stream and always closes it (trio-websocket's
    ``open_websocket_url`` leaves the socket open when the peer closes first)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, parts.hostname, resource)
            try:
                yield ws
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def read_until(ws: WebSocketConnection, key: str) -> list[dict[str, Any]]:
    """Messages up to and including the first that has ``key`` (at the top or in
    ``serverContent``)."""
    seen = []
    while True:
        message = json.loads(await ws.get_message())
        seen.append(message)
        if key in message or key in message.get("serverContent", {}):
            return seen


async def test_bad_key_is_closed_with_1007() -> None:
    fake = FakeGemini()
    async with served(fake):
        async with connected(fake.endpoint("wrong").url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert closed.value.reason.code == 1007
    assert GeminiCodec().close_reason(1007) is Reason.UPSTREAM_REJECTED


async def test_refuse_status() -> None:
    fake = FakeGemini(refuse_status=503)
    async with served(fake) as url:
        with pytest.RaisesGroup(
            pytest.RaisesExc(ConnectionRejected, check=lambda e: e.status_code == 503),
            allow_unwrapped=True,
            flatten_subgroups=True,
        ):
            async with connected(url):
                pass


async def test_echo_answers_24khz() -> None:
    fake = FakeGemini(echo=True)
    codec = GeminiCodec(instructions="hi")
    async with served(fake) as url, connected(url) as ws:
        for frame in codec.opening([], first=True):
            await ws.send_message(frame)
        assert json.loads(await ws.get_message()) == {"setupComplete": {}}
        for _ in range(10):
            await ws.send_message(codec.audio(SILENCE_20MS))
        audio = []
        while len(audio) < 3:
            event = codec.decode(await ws.get_message())
            if isinstance(event, AgentAudio):
                audio.append(event)
        session = fake.sessions[0]
        assert session.setup is not None and session.setup["systemInstruction"]
        assert session.audio_in == 10 and session.audio_bytes_in == 320 + 8 * 640
    assert all(set(a.audio) <= {0xFF, 0x7F, 0xFE, 0x7E} for a in audio)  # silence stays silent


async def test_nothing_may_come_before_setup_complete() -> None:
    # the service must acknowledge the setup before anything else is sent (google-genai waits
    # for setupComplete): the fake ignores what comes earlier, and records the violation
    fake = FakeGemini(echo=True, setup_delay=0.2)
    codec = GeminiCodec(greeting="Hi")
    async with served(fake) as url, connected(url) as ws:
        (setup,) = codec.opening([], first=True)
        await ws.send_message(setup)
        await ws.send_message(codec.audio(SILENCE_20MS))  # too early
        await ws.send_message(json.dumps({"realtimeInput": {"text": "too early"}}))
        ack = await ws.get_message()
        for frame in [*(codec.acknowledged(ack) or []), codec.audio(SILENCE_20MS)]:
            await ws.send_message(frame)  # the greeting request, then audio: in time
        await read_until(ws, "turnComplete")  # the greeting is answered
    session = fake.sessions[0]
    assert session.setup_complete_at == approx(session.opened_at + 0.2, abs=0.05)
    assert session.before_setup_complete == ["realtimeInput", "realtimeInput"]
    assert session.errors == ["realtimeInput before setupComplete"] * 2
    assert session.audio_in == 1 and session.texts == [GREETING_PROMPT + "Hi"]


async def test_speech_transcripts_usage_handles_and_resume() -> None:
    fake = FakeGemini(speech=[Speech(0.05, "Hello caller")], heard=[(0.01, "hi there")])
    resumption = Resumption()
    codec = GeminiCodec(resumption=resumption)
    events: list[Any] = []
    async with served(fake) as url:
        async with connected(url) as ws:
            for frame in codec.opening([], first=True):
                await ws.send_message(frame)
            for message in await read_until(ws, "sessionResumptionUpdate"):
                events.append(codec.decode(json.dumps(message)))
        assert Transcript("caller", "hi there") in events
        assert Transcript("agent", "Hello caller") in events
        assert sum(isinstance(e, AgentAudio) for e in events) >= 4
        assert resumption.handle == "handle-1-1"
        # a new session resumes with the handle, without replay
        again = GeminiCodec(resumption=resumption)
        async with connected(url) as ws:
            for frame in again.opening([Transcript("caller", "hi there")], first=False):
                await ws.send_message(frame)
            assert json.loads(await ws.get_message()) == {"setupComplete": {}}
        assert (await fake.wait_for_session(2)).resumed_from == "handle-1-1"


async def test_unknown_handle_is_refused_with_1008() -> None:
    fake = FakeGemini()
    codec = GeminiCodec(resumption=Resumption("forged"))
    async with served(fake) as url, connected(url) as ws:
        for frame in codec.opening([Transcript("caller", "x")], first=False):
            await ws.send_message(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1008
    assert codec.close_reason(1008) is Reason.UPSTREAM_CLOSED  # retried by replaying
    assert codec.resumption.handle is None


async def test_interrupt_tool_call_and_response() -> None:
    fake = FakeGemini(
        speech=[Speech(0.0, "a long answer", bytes(48 * 1000))],
        interrupt_at=[0.1],
        tool_calls=[FakeToolCall(0.2, "lookup", {"q": 1})],
    )
    codec = GeminiCodec()
    async with served(fake) as url, connected(url) as ws:
        for frame in codec.opening([], first=True):
            await ws.send_message(frame)
        events = [codec.decode(json.dumps(m)) for m in await read_until(ws, "toolCall")]
        assert SpeechStarted() in events
        call = events[-1]
        assert call == ToolCall("fc-1-1", "lookup", '{"q":1}')
        exchange = ToolExchange(call.call_id, call.name, call.arguments, '{"found":true}')
        for frame in codec.tool_result(exchange, known=True):
            await ws.send_message(frame)
        for frame in codec.dtmf("5"):
            await ws.send_message(frame)
        messages = await read_until(ws, "turnComplete") + await read_until(ws, "turnComplete")
        session = fake.sessions[0]
        assert session.tool_responses == [
            {"id": "fc-1-1", "name": "lookup", "response": {"found": True}}
        ]
        assert session.texts == ["The caller pressed 5 on the keypad."]
    cut = [
        m
        for m in session.sent
        if "serverContent" in m and "outputTranscription" in m["serverContent"]
    ]
    assert all("long answer" not in json.dumps(m) for m in cut)  # the interrupted turn ended
    assert sum("turnComplete" in m.get("serverContent", {}) for m in messages) == 2


async def test_go_away_then_close_1000() -> None:
    fake = FakeGemini(go_away_at=(0.05, 0.1))
    codec = GeminiCodec()
    async with served(fake) as url, connected(url) as ws:
        for frame in codec.opening([], first=True):
            await ws.send_message(frame)
        await read_until(ws, "goAway")
        codec.decode('{"goAway":{"timeLeft":"0.1s"}}')
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert codec.ending_in == 0.1 and closed.value.reason.code == 1000
    assert codec.close_reason(1000) is Reason.UPSTREAM_CLOSED


async def test_close_at_and_freeze() -> None:
    fake = FakeGemini(close_at=(0.05, 1011))
    async with served(fake) as url, connected(url) as ws:
        await ws.send_message(GeminiCodec().opening([], first=True)[0])
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
    assert closed.value.reason.code == 1011
    frozen = FakeGemini(freeze_at=0.0, speech=[Speech(0.05, "never")])
    async with served(frozen) as url, connected(url) as ws:
        await ws.send_message(GeminiCodec().opening([], first=True)[0])
        with trio.move_on_after(0.3) as waited:
            await ws.get_message()  # setupComplete may pass; nothing after the freeze
            await ws.get_message()
        assert waited.cancelled_caught


# --- the fault knobs every fake shares (named as FakeOpenAIRealtime's) ---------------------------


async def test_speech_started_at_is_interrupted() -> None:
    fake = FakeGemini(
        speech=[Speech(0.0, "a long answer", bytes(48 * 1000))], speech_started_at=[0.1]
    )
    codec = GeminiCodec()
    async with served(fake) as url, connected(url) as ws:
        for frame in codec.opening([], first=True):
            await ws.send_message(frame)
        events = [codec.decode(json.dumps(m)) for m in await read_until(ws, "interrupted")]
    assert events[-1] == SpeechStarted()
    session = fake.sessions[0]
    assert 0 < session.audio_bytes_out < 48 * 1000  # the turn was cut short
    assert session._cut == 1


async def test_stop_reading_at_leaves_pings_unanswered_while_the_fake_still_speaks() -> None:
    fake = FakeGemini(stop_reading_at=0.2, speech=[Speech(0.3, "still talking")])
    async with served(fake) as url, connected(url) as ws:
        await ws.send_message(GeminiCodec().opening([], first=True)[0])
        assert json.loads(await ws.get_message()) == {"setupComplete": {}}
        with trio.fail_after(1):
            await ws.ping()  # answered: it still reads
        await trio.sleep(0.2)
        with trio.move_on_after(0.3) as unanswered:
            await ws.ping()
        assert unanswered.cancelled_caught  # no pong: it no longer reads
        await read_until(ws, "outputTranscription")  # but what it says still arrives


def refused_with(status: int) -> Any:
    return pytest.RaisesGroup(
        pytest.RaisesExc(ConnectionRejected, check=lambda e: e.status_code == status),
        allow_unwrapped=True,
        flatten_subgroups=True,
    )


async def test_handshake_delay_and_refuse_status_apply_to_the_scripted_connection_only() -> None:
    fake = FakeGemini(handshake_delay=0.3, only_session=2)
    took = []
    async with served(fake) as url:
        for _ in range(2):
            began = trio.current_time()
            async with connected(url):
                took.append(trio.current_time() - began)
        fake.refuse_status, fake.only_session = 503, 3
        with refused_with(503):
            async with connected(url):
                pass
        async with connected(url):  # the fourth connection is not scripted
            pass
    assert took[0] < 0.3 <= took[1]
    assert [s.number for s in fake.sessions] == [1, 2, 4]  # refused ones are counted


async def test_close_at_with_close_reason_drops_only_the_scripted_session() -> None:
    fake = FakeGemini(close_at=(0.05, 1011), close_reason="gone fishing", only_session=1)
    async with served(fake) as url:
        async with connected(url) as ws:
            await ws.send_message(GeminiCodec().opening([], first=True)[0])
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
        async with connected(url) as ws:
            await ws.send_message(GeminiCodec().opening([], first=True)[0])
            assert json.loads(await ws.get_message()) == {"setupComplete": {}}
            with trio.move_on_after(0.2) as quiet:
                await ws.get_message()
            assert quiet.cancelled_caught
    assert (closed.value.reason.code, closed.value.reason.reason) == (1011, "gone fishing")
    assert [s.close_code for s in fake.sessions] == [1011, 1000]
