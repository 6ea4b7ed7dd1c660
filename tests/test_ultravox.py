"""Ultravox: the sans-IO codec as tables, then the provider against the fake over real loopback.

Codec tests are synchronous tables plus hypothesis for malformed input (it may only ever raise
``RemoteProtocolError``, and ``BadAudio`` for audio). Provider tests run ``FakeUltravox`` (hypercorn REST + trio-websocket) on
loopback port 0, each under a real-time budget, and check both sides: what the provider returned
and what the fake recorded.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from voxbridge.audio import pcm16_to_ulaw, tone, ulaw_to_pcm16
from voxbridge.errors import BadAudio, Reason, RemoteProtocolError, UpstreamConnectFailed
from voxbridge.providers.base import Provider, ProviderCodec
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.providers.events import (
    AgentAudio,
    ProviderEvent,
    SpeechStarted,
    ToolCall,
    Transcript,
    Truncation,
)
from voxbridge.providers.ultravox import UltravoxCodec
from voxbridge.providers.ultravox_rest import UltravoxProvider
from voxbridge.testing.fake_ultravox import FakeUltravox, UltravoxSession, Utterance

KEY = "uv-SECRET-0123456789abcdef"
BUDGET = 5.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def transcript(role: str, ordinal: int = 1, **fields: Any) -> str:
    return json.dumps(
        {"type": "transcript", "role": role, "medium": "voice", "ordinal": ordinal}
        | {"text": None, "delta": None, "final": False}
        | fields
    )


# --- codec: audio -------------------------------------------------------------------------------


def test_caller_audio_becomes_pcm16_binary() -> None:
    # mu-law 0xFF 0x7F 0x00 0x80 -> s16le 0, 0, -32124, 32124
    frame = UltravoxCodec().audio(b64(b"\xff\x7f\x00\x80"))
    assert frame == b"\x00\x00\x00\x00\x84\x82\x7c\x7d"


def test_caller_audio_20ms_is_320_bytes() -> None:
    assert len(UltravoxCodec().audio(b64(tone(0.02)))) == 320


def test_bad_caller_base64_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="base64"):
        UltravoxCodec().audio("not base64!")


def test_agent_audio_becomes_ulaw_bytes() -> None:
    # s16le 0, -32124, 32124, 8 -> mu-law 0xFF 0x00 0x80 0xFE
    event = UltravoxCodec().decode(b"\x00\x00\x84\x82\x7c\x7d\x08\x00")
    assert event == AgentAudio(b"\xff\x00\x80\xfe", item_id=None, response_id=None)


@pytest.mark.parametrize("size", [1, 3, 321])
def test_odd_length_agent_audio_is_bad_audio(size: int) -> None:
    codec = UltravoxCodec()
    with pytest.raises(BadAudio, match=f"{size} bytes is not whole 16-bit samples") as info:
        codec.decode(b"\x00" * size)
    assert isinstance(info.value, RemoteProtocolError)
    # the codec carries on: the next, whole frame plays
    assert codec.decode(b"\x00\x00") == AgentAudio(b"\xff")


@pytest.mark.parametrize("size", [2, 4, 320, 322, 3200])
def test_even_length_agent_audio_is_ulaw(size: int) -> None:
    pcm = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    event = UltravoxCodec().decode(pcm)
    assert event == AgentAudio(pcm16_to_ulaw(pcm))
    assert isinstance(event, AgentAudio) and len(event.audio) == size // 2


def test_empty_agent_audio_is_ignored() -> None:
    assert UltravoxCodec().decode(b"") is None


@settings(max_examples=200)
@given(st.binary(max_size=1000))
def test_any_binary_frame_is_audio_nothing_or_bad_audio(frame: bytes) -> None:
    try:
        event = UltravoxCodec().decode(frame)
    except BadAudio:
        assert len(frame) % 2 == 1
        return
    if not frame:
        assert event is None
        return
    assert len(frame) % 2 == 0
    assert event == AgentAudio(pcm16_to_ulaw(frame))
    assert isinstance(event, AgentAudio) and len(event.audio) == len(frame) // 2


# --- codec: data messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"type": "state", "state": "listening"},
        {"type": "call_started", "callId": "550e8400-e29b-41d4-a716-446655440000"},
        {"type": "pong", "timestamp": 1234567890.123},
        {"type": "debug", "message": "..."},
        {"type": "something_new", "x": [1, 2]},
    ],
)
def test_ignored_messages(message: dict[str, Any]) -> None:
    assert UltravoxCodec().decode(json.dumps(message)) is None


def test_playback_clear_buffer_is_barge_in() -> None:
    assert UltravoxCodec().decode('{"type":"playback_clear_buffer"}') == SpeechStarted()


def test_transcript_deltas_accumulate_until_final() -> None:
    codec = UltravoxCodec()
    assert codec.decode(transcript("agent", delta="Hello")) is None
    assert codec.decode(transcript("agent", delta=" there")) is None
    assert codec.decode(transcript("agent", delta=", caller.", final=True)) == Transcript(
        "agent", "Hello there, caller."
    )
    # the utterance is done: a new one with the next ordinal starts from scratch
    assert codec.decode(transcript("agent", 2, delta="Bye.", final=True)) == Transcript(
        "agent", "Bye."
    )


def test_transcript_text_replaces_what_came_before() -> None:
    codec = UltravoxCodec()
    assert codec.decode(transcript("user", text="I want")) is None
    assert codec.decode(transcript("user", text="I want a donut")) is None
    final = codec.decode(transcript("user", text="I want a donut please", final=True))
    assert final == Transcript("caller", "I want a donut please")


def test_transcript_final_without_text_keeps_the_accumulated_text() -> None:
    codec = UltravoxCodec()
    codec.decode(transcript("agent", delta="All done"))
    assert codec.decode(transcript("agent", final=True)) == Transcript("agent", "All done")


def test_transcripts_accumulate_per_ordinal() -> None:
    codec = UltravoxCodec()
    assert codec.decode(transcript("agent", 3, delta="Let me")) is None
    assert codec.decode(transcript("user", 4, delta="wait")) is None
    assert codec.decode(transcript("agent", 3, delta=" check", final=True)) == Transcript(
        "agent", "Let me check"
    )
    assert codec.decode(transcript("user", 4, delta=" what?", final=True)) == Transcript(
        "caller", "wait what?"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "", "final": True},  # nothing said (e.g. interrupted at once)
        {"text": "   ", "final": True},
        {"final": True},
    ],
)
def test_empty_final_transcripts_are_not_emitted(fields: dict[str, Any]) -> None:
    assert UltravoxCodec().decode(transcript("agent", **fields)) is None


def test_unknown_transcript_role_is_ignored() -> None:
    assert UltravoxCodec().decode(transcript("tool", text="x", final=True)) is None


def test_pending_transcripts_are_bounded() -> None:
    codec = UltravoxCodec()
    for ordinal in range(1000):
        codec.decode(transcript("agent", ordinal, delta="never final"))
    assert repr(codec) == "UltravoxCodec(call_id=None, pending=64)"


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "not json",
        "[]",
        "42",
        '"transcript"',
        "{}",
        '{"type": 3}',
        '{"type": null}',
        '{"type": "transcript"}',
        '{"type": "transcript", "role": 1, "final": true}',
        '{"type": "transcript", "role": "agent", "text": 5, "final": true}',
        '{"type": "transcript", "role": "agent", "delta": ["x"], "final": false}',
        '{"type": "transcript", "role": "agent", "text": "x", "final": "yes"}',
        "[" * 100_000,
    ],
)
def test_malformed_data_messages(frame: str) -> None:
    with pytest.raises(RemoteProtocolError):
        UltravoxCodec().decode(frame)


def decode_or_protocol_error(codec: UltravoxCodec, frame: str | bytes) -> None:
    try:
        event = codec.decode(frame)
    except BadAudio:
        assert isinstance(frame, bytes) and len(frame) % 2  # only audio is bad audio
        return
    except RemoteProtocolError:
        assert isinstance(frame, str)  # a data message; audio is never malformed otherwise
        return
    assert event is None or isinstance(event, AgentAudio | SpeechStarted | Transcript | ToolCall)


@given(st.lists(st.text(max_size=200) | st.binary(max_size=200), max_size=8))
def test_arbitrary_frames_only_raise_protocol_errors(frames: list[str | bytes]) -> None:
    codec = UltravoxCodec()
    for frame in frames:
        decode_or_protocol_error(codec, frame)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    ["transcript", "playback_clear_buffer", "client_tool_invocation", "state", "x"]
                )
            },
            optional={
                key: _json_values | st.sampled_from(["user", "agent", True, False, 1, "hi"])
                for key in (
                    "role",
                    "text",
                    "delta",
                    "final",
                    "ordinal",
                    "medium",
                    "toolName",
                    "invocationId",
                    "parameters",
                )
            },
        ),
        max_size=10,
    )
)
def test_arbitrary_data_messages_only_raise_protocol_errors(messages: list[dict[str, Any]]) -> None:
    codec = UltravoxCodec()
    for message in messages:
        decode_or_protocol_error(codec, json.dumps(message))


# --- codec: session shape -----------------------------------------------------------------------


def test_opening_and_interrupt_send_nothing() -> None:
    codec = UltravoxCodec()
    assert codec.opening([], first=True) == []
    assert (
        codec.opening([Transcript("caller", "hi")], first=False) == []
    )  # history went into call creation
    assert codec.interrupt([]) == []
    assert codec.interrupt([Truncation("item", 1234), Truncation("next", 0)]) == []


def test_closing_hangs_up() -> None:
    assert [json.loads(f) for f in UltravoxCodec().closing()] == [
        {"type": "hang_up", "message": ""}
    ]
    frames = UltravoxCodec(hangup_message="Goodbye!").closing()
    assert [json.loads(f) for f in frames] == [{"type": "hang_up", "message": "Goodbye!"}]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, Reason.AGENT_HANGUP),
        (1001, Reason.UPSTREAM_CLOSED),
        (1006, Reason.UPSTREAM_CLOSED),
        (1008, Reason.UPSTREAM_REJECTED),
        (1011, Reason.UPSTREAM_CLOSED),
        (4000, Reason.UPSTREAM_CLOSED),
    ],
)
def test_close_reason(code: int, reason: Reason) -> None:
    assert UltravoxCodec().close_reason(code) is reason


# --- provider against the fake ------------------------------------------------------------------


@asynccontextmanager
async def running(**knobs: Any) -> AsyncIterator[FakeUltravox]:
    fake = FakeUltravox(KEY, **knobs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


def provider(fake: FakeUltravox, key: str | None = KEY, **options: Any) -> UltravoxProvider:
    assert fake.base_url is not None
    settings: dict[str, Any] = {
        "base_url": fake.base_url,
        "voice": "Mark",
        "system_prompt": "You are a test agent.",
        "connect_timeout": 2.0,
    }
    return UltravoxProvider(key, **(settings | options))


@asynccontextmanager
async def joined(endpoint: ProviderEndpoint) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to ``endpoint``; the TCP stream is closed on exit whatever happened
    (trio-websocket leaves a client's stream open when the server closed first).

    The queue holds what the fake sends unprompted, so the reader keeps reading (and answering
    pings) while a test is not reading messages (docs/library-notes.md, "A paused reader answers no pings").
    """
    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, endpoint.host, endpoint.resource, message_queue_size=64
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def events_until_closed(
    ws: WebSocketConnection, codec: ProviderCodec
) -> tuple[list[ProviderEvent], int]:
    events: list[ProviderEvent] = []
    try:
        while True:
            event = codec.decode(await ws.get_message())
            if event is not None:
                events.append(event)
    except ConnectionClosed as exc:
        assert exc.reason is not None
        return events, exc.reason.code


async def test_session_creates_a_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(BUDGET):
        async with running() as fake:
            uv: Provider = provider(fake, model="ultravox-v0.7")
            session = await uv.session([], first=True)
    [request] = fake.requests
    assert request.status == 201
    assert request.api_key == KEY
    assert request.medium == {
        "inputSampleRate": 8000,
        "outputSampleRate": 8000,
        "clientBufferSizeMs": 30000,
    }
    assert request.body["systemPrompt"] == "You are a test agent."
    assert (request.body["voice"], request.body["model"]) == ("Mark", "ultravox-v0.7")
    assert request.body["firstSpeakerSettings"] == {"agent": {}}
    assert "initialMessages" not in request.body
    assert request.query == {}
    assert session.endpoint.name == "ultravox"
    assert isinstance(session.codec, UltravoxCodec)
    url = urlsplit(session.endpoint.url)
    assert f"{url.scheme}://{url.netloc}" == fake.ws_url
    assert url.path == f"/calls/{request.call_id}"
    assert dict(parse_qsl(url.query)) == {"apiVersion": "1"}
    for text in (repr(uv), repr(session), caplog.text):
        assert KEY not in text


async def test_optional_fields_are_left_out() -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            await provider(fake, voice=None).session([], first=True)
    assert "voice" not in fake.requests[0].body
    assert "model" not in fake.requests[0].body


async def test_history_becomes_initial_messages() -> None:
    history = [
        Transcript("agent", "Hi, this is Dr. Donut."),
        Transcript("caller", "One glazed, please."),
        Transcript("agent", "Anything else?"),
    ]
    with trio.fail_after(BUDGET):
        async with running() as fake:
            uv = provider(fake)
            await uv.session(history, first=False)
            await uv.session(history[:2], first=False)
            await uv.session([], first=False)  # dropped before any line was final
    resumed, answering, empty = fake.requests
    assert empty.query == {"enableGreetingPrompt": "false"}
    assert empty.body["firstSpeakerSettings"] == {"user": {}} and empty.initial_messages == []
    assert resumed.status == answering.status == 201
    assert resumed.initial_messages == [
        {
            "role": "MESSAGE_ROLE_AGENT",
            "text": "Hi, this is Dr. Donut.",
            "medium": "MESSAGE_MEDIUM_VOICE",
        },
        {
            "role": "MESSAGE_ROLE_USER",
            "text": "One glazed, please.",
            "medium": "MESSAGE_MEDIUM_VOICE",
        },
        {"role": "MESSAGE_ROLE_AGENT", "text": "Anything else?", "medium": "MESSAGE_MEDIUM_VOICE"},
    ]
    # resuming: no re-greeting; the agent waits for the caller, or answers the caller's last words
    assert resumed.query == {"enableGreetingPrompt": "false"}
    assert resumed.body["firstSpeakerSettings"] == {"user": {}}
    assert answering.body["firstSpeakerSettings"] == {"agent": {}}


@pytest.mark.parametrize("key", ["uv-wrong-key", None])
async def test_bad_key_fails_to_connect(key: str | None) -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            with pytest.raises(UpstreamConnectFailed) as failed:
                await provider(fake, key).session([], first=True)
    assert failed.value.status == 401 and failed.value.refused  # final: the link gives up
    assert "401" in str(failed.value)
    assert "Invalid API key" in str(failed.value) or "not provided" in str(failed.value)
    assert KEY not in repr(failed.value)
    if key:
        assert key not in str(failed.value) and key not in repr(failed.value)
    assert fake.requests[0].status == 401
    assert not fake.calls


async def test_refused_call_reports_status_and_error_text() -> None:
    with trio.fail_after(BUDGET):
        async with running(refuse_status=503) as fake:
            with pytest.raises(UpstreamConnectFailed) as failed:
                await provider(fake).session([], first=True)
    assert failed.value.status == 503 and not failed.value.refused  # retried by the link
    assert "HTTP 503" in str(failed.value)
    assert "refused by the fake" in str(failed.value)


async def test_slow_rest_fails_within_connect_timeout() -> None:
    with trio.fail_after(BUDGET):
        async with running(rest_delay=5.0) as fake:
            start = trio.current_time()
            with pytest.raises(UpstreamConnectFailed) as failed:
                await provider(fake, connect_timeout=0.3).session([], first=True)
            elapsed = trio.current_time() - start
    assert failed.value.status is None
    assert "0.3 s" in str(failed.value)
    assert 0.25 <= elapsed < 1.5


async def test_unreachable_rest_fails_to_connect() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    uv = UltravoxProvider(
        KEY,
        base_url=f"http://127.0.0.1:{port}/api",
        voice=None,
        system_prompt="",
        connect_timeout=2,
    )
    with trio.fail_after(BUDGET), pytest.raises(UpstreamConnectFailed) as failed:
        await uv.session([], first=True)
    assert failed.value.status is None
    assert "ConnectError" in str(failed.value)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (201, b'{"callId": "c1"}', "without a ws(s):// joinUrl"),
        (201, b'{"joinUrl": "https://example.invalid/calls/c1"}', "without a ws(s):// joinUrl"),
        (201, b'{"joinUrl": null}', "without a ws(s):// joinUrl"),
        (201, b"[]", "without a ws(s):// joinUrl"),
        (201, b"<html>", "not JSON"),
        (200, b'{"joinUrl": "wss://x/calls/c1"}', "HTTP 200"),
        (
            500,
            b"<h1>Server Error</h1>\n\n",
            "HTTP 500 Internal Server Error: <h1>Server Error</h1>",
        ),
        (400, json.dumps({"detail": "x" * 500}).encode(), "x" * 190 + "..."),
        (401, json.dumps({"detail": f"bad key {KEY}"}).encode(), "bad key <redacted>"),
    ],
)
async def test_bad_answers_fail_to_connect(status: int, body: bytes, message: str) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body)

    uv = UltravoxProvider(
        KEY,
        voice=None,
        system_prompt="",
        connect_timeout=2,
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )
    with pytest.raises(UpstreamConnectFailed) as failed:
        await uv.session([], first=True)
    assert failed.value.refused is (status == 401)
    assert message in str(failed.value)
    assert KEY not in repr(failed.value)
    assert str(seen[0].url) == "https://api.ultravox.ai/api/calls"
    assert seen[0].headers["x-api-key"] == KEY


def test_join_url_keeps_its_query() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201, json={"joinUrl": "wss://uv.example/calls/c1?token=t&apiVersion=2"}
        )

    uv = UltravoxProvider(
        None,
        voice=None,
        system_prompt="",
        connect_timeout=2,
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )
    session = trio.run(partial(uv.session, [], first=True))
    assert session.endpoint.url == "wss://uv.example/calls/c1?token=t&apiVersion=2"
    assert (session.endpoint.secure, session.endpoint.port) == (True, 443)


def test_provider_rejects_a_non_http_base_url() -> None:
    with pytest.raises(ValueError, match="http"):
        UltravoxProvider(
            KEY, base_url="wss://x/api", voice=None, system_prompt="", connect_timeout=1
        )


async def test_audio_round_trip_through_the_fake() -> None:
    sent = tone(0.2, 440.0, amplitude=0.5) + bytes(range(256)) * 2  # every code, 0x7F included
    chunks = [sent[i : i + 160] for i in range(0, len(sent), 160)]
    with trio.fail_after(BUDGET):
        async with running(delay=0.05) as fake:
            session = await provider(fake).session([], first=True)
            codec = session.codec
            received = b""
            async with joined(session.endpoint) as ws:
                for chunk in chunks:
                    frame = codec.audio(b64(chunk))
                    assert frame == ulaw_to_pcm16(chunk)
                    await ws.send_message(frame)
                while len(received) < len(sent):
                    event = codec.decode(await ws.get_message())
                    if isinstance(event, AgentAudio):
                        assert event.item_id is None and event.response_id is None
                        received += event.audio
            agent = await fake.wait_for_session()
            await agent.wait_closed()
    # G.711 round trip is the identity except -0 (0x7F) coming back as +0 (0xFF)
    assert received == sent.replace(b"\x7f", b"\xff")
    assert (agent.audio_in, agent.audio_out) == (len(chunks), len(chunks))
    assert agent.audio_bytes_in == 2 * len(sent)
    assert agent.query == {"apiVersion": "1"}
    assert agent.close_code == 1000


async def test_transcripts_barge_in_and_agent_hangup() -> None:
    script = [
        Utterance(0.15, "agent", "Hi, this is Dr. Donut. What can I get you?"),
        Utterance(0.40, "user", "A dozen glazed please", mode="text"),
    ]
    with trio.fail_after(BUDGET):
        async with running(script=script, clear_at=0.05, hangup_at=0.65) as fake:
            session = await provider(fake).session([], first=True)
            async with joined(session.endpoint) as ws:
                events, code = await events_until_closed(ws, session.codec)
            agent = await fake.wait_for_session()
    assert events == [
        SpeechStarted(),
        Transcript("agent", "Hi, this is Dr. Donut. What can I get you?"),
        Transcript("caller", "A dozen glazed please"),
    ]
    assert code == 1000
    assert session.codec.close_reason(code) is Reason.AGENT_HANGUP
    assert (agent.close_code, agent.close_reason) == (1000, "agent hung up")
    assert [m["type"] for m in agent.sent[:2]] == ["call_started", "state"]


async def test_hang_up_reaches_the_fake() -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            session = await provider(fake, hangup_message="Goodbye!").session([], first=True)
            async with joined(session.endpoint) as ws:
                await ws.send_message('{"type":"ping","timestamp":1.5}')
                for frame in session.codec.closing():
                    await ws.send_message(frame)
                events, code = await events_until_closed(ws, session.codec)
            agent = await fake.wait_for_session()
            await agent.wait_closed()
    assert agent.hang_ups == [{"type": "hang_up", "message": "Goodbye!"}]
    assert {"type": "pong", "timestamp": 1.5} in agent.sent
    assert events == [] and code == 1000
    assert agent.close_code == 1000


async def test_dropped_session_is_upstream_closed() -> None:
    with trio.fail_after(BUDGET):
        async with running(close_at=(0.1, 1011)) as fake:
            session = await provider(fake).session([], first=True)
            async with joined(session.endpoint) as ws:
                _, code = await events_until_closed(ws, session.codec)
    assert code == 1011
    assert session.codec.close_reason(code) is Reason.UPSTREAM_CLOSED


async def test_unknown_or_rejoined_call_is_rejected() -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            session = await provider(fake).session([], first=True)
            bogus = ProviderEndpoint("ultravox", f"{fake.ws_url}/calls/nope?apiVersion=1")
            with rejected(404):
                async with joined(bogus):
                    pass
            async with joined(session.endpoint):
                with rejected(409):
                    async with joined(session.endpoint):
                        pass
    assert len(fake.sessions) == 1


def rejected(status: int) -> pytest.RaisesGroup[ConnectionRejected]:
    """trio-websocket raises the rejection in the reader task, so it arrives in a group."""
    return pytest.RaisesGroup(
        pytest.RaisesExc(ConnectionRejected, check=lambda exc: exc.status_code == status),
        allow_unwrapped=True,
        flatten_subgroups=True,
    )


async def test_stop_reading_fault_stops_pongs() -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            session = await provider(fake).session([], first=True)
            async with joined(session.endpoint) as ws:
                agent: UltravoxSession = await fake.wait_for_session()
                with trio.fail_after(1):
                    await ws.ping()  # answered
                agent.stream.stop_reading()
                with trio.move_on_after(0.3) as unanswered:
                    await ws.ping()
                assert unanswered.cancelled_caught
                await agent.stream.vanish()


async def test_fake_validates_call_creation() -> None:
    good = UltravoxProvider(KEY, voice=None, system_prompt="", connect_timeout=1).request_body(
        [], first=True
    )
    wrong_rate = good | {"medium": {"serverWebSocket": {"inputSampleRate": 16000}}}
    bad_role = good | {"initialMessages": [{"role": "MESSAGE_ROLE_CALLER", "text": "hi"}]}
    with trio.fail_after(BUDGET):
        async with running() as fake, httpx.AsyncClient(headers={"X-API-Key": KEY}) as client:
            calls = f"{fake.base_url}/calls"
            answers = [
                await client.post(calls, json=wrong_rate),
                await client.post(calls, json=bad_role),
                await client.post(calls, content=b"{"),
                await client.get(calls),
                await client.post(f"{fake.base_url}/agents", json=good),
                await client.post(calls, json=good),
            ]
    assert [a.status_code for a in answers] == [400, 400, 400, 405, 404, 201]
    assert "inputSampleRate must be 8000" in answers[0].json()["detail"]
    assert "initialMessages[0].role must be one of" in answers[1].json()["detail"]
    assert list(fake.calls) == [answers[-1].json()["callId"]]
