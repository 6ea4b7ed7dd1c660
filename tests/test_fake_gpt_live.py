"""FakeGptLive over real sockets on 127.0.0.1, driven by the GPT-Live codec: every server event
it sends validates against the ``openai`` package's ``types.live.ServerEvent``; its knobs (echo,
speech, silent interruption, usage, ``session.closed`` reasons, drop, freeze, refuse, tools)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from openai.types.live import ServerEvent
from pydantic import TypeAdapter
from pytest import approx
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from voxbridge.errors import Reason
from voxbridge.providers.events import (
    AgentAudio,
    AgentHangup,
    ToolCall,
    ToolExchange,
    Transcript,
    Usage,
)
from voxbridge.providers.gpt_live import GREETING_PROMPT, GptLiveCodec
from voxbridge.testing.fake_gpt_live import FakeGptLive, FakeLiveToolCall
from voxbridge.testing.fake_openai import heard_text, speech
from voxbridge.tools import Tool

SERVER: TypeAdapter[Any] = TypeAdapter(ServerEvent)
KEY = "sk-live-test"
BUDGET = 10  # seconds of real time per test: a hang fails fast


@asynccontextmanager
async def client(url: str, key: str | None) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket that owns its TCP stream and always closes it (trio-websocket's
    ``open_websocket_url`` leaves the socket open when the handshake is rejected)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    headers = [(b"Authorization", f"Bearer {key}".encode())] if key else []
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, f"{parts.hostname}:{parts.port}", parts.path, extra_headers=headers
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def connected(fake: FakeGptLive, key: str | None = KEY) -> AsyncIterator[WebSocketConnection]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        try:
            async with client(url, key) as ws:
                yield ws
        finally:
            nursery.cancel_scope.cancel()


async def events(ws: WebSocketConnection, until: str, limit: int = 500) -> list[dict[str, Any]]:
    """Server events up to and including the first of type ``until``, each validated."""
    got: list[dict[str, Any]] = []
    for _ in range(limit):
        event = json.loads(await ws.get_message())
        assert SERVER.validate_python(event).type == event["type"]
        got.append(event)
        if event["type"] == until:
            return got
    raise AssertionError(f"no {until} in {limit} events")


async def start(ws: WebSocketConnection, codec: GptLiveCodec, history: Any = ()) -> None:
    """What the link does: ``session.start``, wait for ``session.started``, then the rest."""
    for frame in codec.opening(list(history), first=not history):
        await ws.send_message(frame)
    started = (await events(ws, "session.started"))[-1]
    for frame in codec.acknowledged(json.dumps(started)) or []:
        await ws.send_message(frame)


async def rejected(fake: FakeGptLive, key: str | None = KEY) -> int:
    """The HTTP status the fake's handshake answers (it must reject it)."""
    try:
        async with connected(fake, key):
            pass
    except BaseExceptionGroup as group:
        matched, _ = group.split(ConnectionRejected)
        assert matched is not None, group
        while isinstance(matched, BaseExceptionGroup):
            [matched] = matched.exceptions
        assert isinstance(matched, ConnectionRejected)
        return matched.status_code or 0
    except ConnectionRejected as exc:
        return exc.status_code or 0
    raise AssertionError("the handshake was accepted")


async def test_refuses_without_the_key() -> None:
    with trio.fail_after(BUDGET):
        assert await rejected(FakeGptLive(api_key=KEY), key="wrong") == 401
        assert await rejected(FakeGptLive(api_key=KEY), key=None) == 401
        assert await rejected(FakeGptLive(api_key=KEY, refuse_status=503)) == 503


async def test_echo_and_session_started() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(api_key=KEY, echo_delay=0.01, usage_every=None)
        codec = GptLiveCodec(instructions="be brief")
        async with connected(fake) as ws:
            await start(ws, codec)
            session = fake.sessions[0]
            assert session.start is not None
            assert session.start["audio"]["format"] == {"type": "audio/pcmu", "rate": 8000}
            payload = base64.b64encode(b"\x01\x02\x03").decode()
            await ws.send_message(codec.audio(payload))
            [delta] = await events(ws, "session.output_audio.delta")
            assert codec.decode(json.dumps(delta)) == AgentAudio(b"\x01\x02\x03")
            assert session.audio_in == 1


async def test_the_echo_keeps_the_order_of_chunks_that_arrive_together() -> None:
    """Chunks appended back to back are due within microseconds of each other, so their echoes
    fall due in the same scheduling batch, which trio may run in either order: one player task
    keeps them in order (one task per chunk did not, half the time)."""
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(echo_delay=0.05, usage_every=None)
        codec = GptLiveCodec()
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            chunks = [bytes([k]) * 160 for k in range(1, 21)]
            for chunk in chunks:
                await ws.send_message(codec.audio(base64.b64encode(chunk).decode()))
            back = []
            while len(back) < len(chunks):
                event = codec.decode(await ws.get_message())
                if isinstance(event, AgentAudio):
                    back.append(event.audio)
    assert back == chunks


async def test_commands_before_session_start_are_errors_and_bad_start_is_refused() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive()
        async with connected(fake, key=None) as ws:
            await ws.send_message('{"type":"session.close"}')
            [error] = await events(ws, "error")
            assert error["error"]["code"] == "session_not_started"
            await ws.send_message(GptLiveCodec.audio("//8="))
            [error] = await events(ws, "error")
            assert error["error"]["code"] == "session_not_started"
            assert fake.sessions[0].audio_before_start == 1
            await ws.send_message(json.dumps({"type": "session.start", "session": {"model": "x"}}))
            await events(ws, "error")
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1008


async def test_nothing_may_come_before_session_started() -> None:
    # "Send session.start first and wait for session.started before application commands": what
    # comes between the two is refused (an error each, not acted on) and recorded
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(start_delay=0.2, usage_every=None, answer_pace=float("inf"))
        codec = GptLiveCodec(greeting="Hi!")
        async with connected(fake, key=None) as ws:
            (start_,) = codec.opening([], first=True)
            await ws.send_message(start_)
            await ws.send_message(codec.audio("//8="))  # too early
            await ws.send_message(codec.commentary("too early"))
            got = await events(ws, "session.started")
            errors = [e["error"]["code"] for e in got if e["type"] == "error"]
            assert errors == ["session_not_started"] * 2
            session = fake.sessions[0]
            assert session.started_at == approx(session.opened_at + 0.2, abs=0.1)
            for frame in [*(codec.acknowledged(json.dumps(got[-1])) or []), codec.audio("//8=")]:
                await ws.send_message(frame)  # the greeting, then audio: in time
            await events(ws, "session.output_transcript.delta")
        assert session.before_started == ["session.input_audio.append", "session.commentary.append"]
        assert session.audio_before_start == 1 and session.audio_in == 2
        assert session.commentaries == [GREETING_PROMPT + "Hi!"]


async def test_speech_transcripts_and_silent_interruption() -> None:
    with trio.fail_after(BUDGET):
        said = speech("hello there, how can I help you today? " * 5)
        fake = FakeGptLive(
            speak=[(0.0, said, "hello there")],
            speak_pace=1.0,
            interrupt_at=[0.1],
            caller_transcripts=[(0.2, "wait")],
            usage_every=None,
        )
        codec = GptLiveCodec()
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            got = await events(ws, "session.input_transcript.delta")
            decoded = [codec.decode(json.dumps(e)) for e in got]
            audio = b"".join(e.audio for e in decoded if isinstance(e, AgentAudio))
            assert 0 < len(audio) < len(said)  # stopped part way, and no event said so
            assert heard_text(said).startswith(heard_text(audio))
            assert fake.sessions[0].interrupted == [len(audio)]
            kinds = {e["type"] for e in got}
            assert kinds == {
                "session.output_audio.delta",
                "session.output_transcript.delta",
                "session.input_transcript.delta",
            }
            assert decoded[-1] == Transcript("agent", "hello there"[: len(decoded[-1].text)])  # type: ignore[union-attr]


async def test_usage_and_close_requested() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(usage_every=0.05)
        codec = GptLiveCodec()
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            [update] = await events(ws, "session.usage.updated")
            assert update["usage"] == {"seconds": 0}
            assert codec.decode(json.dumps(update)) is None  # 0 s so far: nothing to add
            for frame in codec.closing():
                await ws.send_message(frame)
            closed = (await events(ws, "session.closed"))[-1]
            assert closed["reason"] == "close_requested"
            codec.decode(json.dumps(closed))
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1000
            assert codec.close_reason(1000) is Reason.AGENT_HANGUP


@pytest.mark.parametrize(
    ("reason", "code", "close"),
    [
        ("expired", 1000, Reason.UPSTREAM_CLOSED),
        ("remote_hangup", 1000, Reason.AGENT_HANGUP),
        ("content", 1000, Reason.UPSTREAM_REJECTED),
        ("connection_lost", 1011, Reason.UPSTREAM_CLOSED),
    ],
)
async def test_session_closed_on_demand(reason: str, code: int, close: Reason) -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(closed_at=(0.05, reason), usage_every=None)
        codec = GptLiveCodec()
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            closed = (await events(ws, "session.closed"))[-1]
            event = codec.decode(json.dumps(closed))
            if reason == "remote_hangup":
                assert isinstance(event, AgentHangup)
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == code
            assert codec.close_reason(code) is close


async def test_drop_and_freeze() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(close_at=(0.05, 1011), usage_every=None)
        async with connected(fake, key=None) as ws:
            await start(ws, GptLiveCodec())
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1011
        fake = FakeGptLive(stop_reading_at=0.0, usage_every=None)
        async with connected(fake, key=None) as ws:
            await start(ws, GptLiveCodec())
            await trio.sleep(0.05)
            with trio.move_on_after(0.3) as frozen:
                await ws.ping()
            assert frozen.cancelled_caught


async def test_history_and_greeting_and_dtmf() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(usage_every=None, answer_pace=float("inf"))
        codec = GptLiveCodec(greeting="Hi!")
        async with connected(fake, key=None) as ws:
            await start(ws, codec, history=[Transcript("caller", "hello")])
            assert fake.sessions[0].start is not None
            assert fake.sessions[0].start["input"][0]["content"][0]["text"] == "hello"
            assert fake.sessions[0].commentaries == []  # no greeting on resume
            for frame in codec.dtmf("42"):
                await ws.send_message(frame)
            await events(ws, "session.output_transcript.delta")
            assert fake.sessions[0].instructions == ["The caller pressed 4 2 on the keypad."]


async def test_tool_call_round_trip() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(
            tool_calls=[FakeLiveToolCall("get_time", '{"zone":"UTC"}', at=0.05)],
            usage_every=None,
            answer_pace=float("inf"),
        )
        tool = Tool("get_time", "The time.")
        codec = GptLiveCodec(tools=[tool], tools_model="gpt-5-mini")
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            got = await events(ws, "response.event")
            call = codec.decode(json.dumps(got[-1]))
            assert isinstance(call, ToolCall)
            assert (call.name, call.arguments) == ("get_time", '{"zone":"UTC"}')
            exchange = ToolExchange(call.call_id, call.name, call.arguments, '"noon"')
            for frame in codec.tool_result(exchange, known=True):
                await ws.send_message(frame)
            said = await events(ws, "session.output_transcript.delta")
            assert said[-1]["delta"].startswith("The result")
            assert fake.sessions[0].tool_outputs == [(call.call_id, '"noon"')]


async def test_a_tool_not_declared_is_never_called() -> None:
    # without a Responses backend declaring it (no tools_model), the service cannot run a tool:
    # the fake does not call it, and says so
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(
            tool_calls=[FakeLiveToolCall("get_time", at=0.05)], usage_every=0.2, start_delay=0
        )
        codec = GptLiveCodec(tools=[Tool("get_time", "The time.")])  # no tools_model
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            got = await events(ws, "session.usage.updated")  # well after the call was due
        assert [e["type"] for e in got] == ["session.usage.updated"]
        assert fake.sessions[0].undeclared_tools == ["get_time"]


def test_usage_increments() -> None:
    codec = GptLiveCodec()
    frame = '{"type":"session.usage.updated","usage":{"seconds":2}}'
    assert codec.decode(frame) == Usage((("billed_seconds", 2.0),))


# --- the fault knobs every fake shares (named as FakeOpenAIRealtime's) ---------------------------


async def test_hangup_at_is_session_closed_remote_hangup_then_1000() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(hangup_at=0.05, usage_every=None)
        codec = GptLiveCodec()
        async with connected(fake, key=None) as ws:
            await start(ws, codec)
            closed = (await events(ws, "session.closed"))[-1]
            assert closed["reason"] == "remote_hangup"
            assert isinstance(codec.decode(json.dumps(closed)), AgentHangup)
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1000
            assert codec.close_reason(1000) is Reason.AGENT_HANGUP
        assert fake.sessions[0].closed_reason == "remote_hangup"


async def test_close_at_sends_close_reason() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(close_at=(0.05, 1011), close_reason="gone fishing", usage_every=None)
        async with connected(fake, key=None) as ws:
            await start(ws, GptLiveCodec())
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert (info.value.reason.code, info.value.reason.reason) == (1011, "gone fishing")
        assert fake.sessions[0].closed_reason is None  # a drop: no session.closed


async def test_handshake_delay_holds_the_scripted_connection_only() -> None:
    with trio.fail_after(BUDGET):
        fake = FakeGptLive(handshake_delay=0.3, only_session=1, usage_every=None)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(fake.serve)
            took = []
            for _ in range(2):
                began = trio.current_time()
                async with client(url, None):
                    took.append(trio.current_time() - began)
            nursery.cancel_scope.cancel()
        assert took[0] >= 0.3 and took[1] < 0.3
