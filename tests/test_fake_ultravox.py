"""The fake Ultravox's knobs: scripted agent audio, raw frames, a hang-up after goodbye, the
greeting, scripted tool calls and the answers to tool results and user text; its REST side for
tools and billing.

WebSocket knobs run in memory on the autojump clock (a call registered on the fake by hand, its
WebSocket served on a memory stream pair), so pacing and close times are asserted to the virtual
millisecond. The REST tests here use httpx on loopback; the provider against the fake is
``tests/test_ultravox.py`` and ``tests/test_ultravox_tools.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from voxbridge.testing.fake_ultravox import (
    CallRequest,
    FakeToolCall,
    FakeUltravox,
    UltravoxSession,
    speech_for,
)

BUDGET = 60.0  # virtual seconds: a hang fails at once on the autojump clock
KEY = "uv-test-key"
GOODBYE = bytes(range(256)) * 125  # 2 s of s16le 8 kHz (32000 bytes): 100 frames of 320


@asynccontextmanager
async def joined(
    fake: FakeUltravox, body: dict[str, Any] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket on a call (creation ``body``) created on ``fake`` by hand, over memory
    streams."""
    number = len(fake.calls) + 1  # as if the number-th POST /api/calls had created it
    call_id = f"call-{number}"
    fake.calls[call_id] = CallRequest(
        KEY, body=body or {}, query={}, status=201, call_id=call_id, number=number
    )
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.handle_stream, server)
        ws = await wrap_client_stream(
            nursery,
            client,  # type: ignore[arg-type]
            "localhost",
            f"/calls/{call_id}?apiVersion=1",
            message_queue_size=256,
        )
        try:
            yield ws
        finally:
            await ws.aclose()


Frames = list[tuple[float, bytes | str]]


async def until_closed(ws: WebSocketConnection, t0: float) -> tuple[Frames, float, int, str]:
    """Every frame received with its arrival time after ``t0``, then the close time, code, reason."""
    frames: Frames = []
    try:
        while True:
            frame = await ws.get_message()
            frames.append((trio.current_time() - t0, frame))
    except ConnectionClosed as exc:
        assert exc.reason is not None
        return frames, trio.current_time() - t0, exc.reason.code, str(exc.reason.reason)


def binary(frames: Frames) -> Frames:
    return [(t, f) for t, f in frames if isinstance(f, bytes)]


async def test_agent_audio_is_sent_in_chunk_frames_faster_than_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, second = GOODBYE[:3200], bytes(range(100))  # 100 ms (10 frames), then 100 bytes
    fake = FakeUltravox(KEY, agent_audio=[(0.1, first), (0.11, second)], close_at=(1.0, 1011))
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session: UltravoxSession = await fake.wait_for_session()
            frames, _, code, _ = await until_closed(ws, session.opened_at)
    audio = binary(frames)
    # 20 ms frames at 5x: one every 4 ms; the second speech waits for the first (0.1 + 10 * 4 ms)
    assert [t for t, _ in audio] == pytest.approx([0.1 + i * 0.004 for i in range(10)] + [0.14])
    assert [len(f) for _, f in audio] == [320] * 10 + [100]
    assert b"".join(f for _, f in audio if isinstance(f, bytes)) == first + second
    assert bytes(session.agent_audio_out) == first + second
    assert (session.agent_frames_out, session.audio_out, session.frames_out) == (11, 0, [])
    assert code == 1011


async def test_agent_audio_chunk_ms_and_all_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pcm = bytes(range(250)) * 4  # 1000 bytes: frames of 30 ms (480 bytes) -> 480, 480, 40
    fake = FakeUltravox(
        KEY, agent_audio=[(0.25, pcm)], chunk_ms=30, speak_pace=math.inf, hangup_at=0.5
    )
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed_at, code, _ = await until_closed(ws, session.opened_at)
    assert [(t, len(f)) for t, f in binary(frames)] == [(0.25, 480), (0.25, 480), (0.25, 40)]
    assert bytes(session.agent_audio_out) == pcm
    assert (closed_at, code) == (0.5, 1000)


@pytest.mark.parametrize(
    ("agent_audio", "closed_at"),
    [
        ([(0.0, GOODBYE)], 0.5),  # goodbye sent by 0.4, hang-up on time at 0.5
        ([(0.2, GOODBYE)], 0.6),  # goodbye still going at 0.5: the hang-up waits for it
        ([(0.5, GOODBYE)], 0.9),  # due at the hang-up itself: it goes first
        ([(0.0, GOODBYE), (0.7, GOODBYE)], 0.5),  # audio due after the hang-up is not waited for
    ],
)
async def test_hangup_comes_after_the_goodbye_audio(
    autojump_clock: trio.testing.MockClock,
    agent_audio: list[tuple[float, bytes]],
    closed_at: float,
) -> None:
    fake = FakeUltravox(KEY, agent_audio=agent_audio, hangup_at=0.5)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed, code, reason = await until_closed(ws, session.opened_at)
            await session.wait_closed()
    audio = binary(frames)
    assert len(audio) == 100
    assert b"".join(f for _, f in audio if isinstance(f, bytes)) == GOODBYE
    assert audio[-1][0] < closed  # the whole goodbye went out before the close frame
    assert closed == pytest.approx(closed_at)
    assert (code, reason) == (1000, "agent hung up")
    assert (session.close_code, session.close_reason) == (1000, "agent hung up")
    assert bytes(session.agent_audio_out) == GOODBYE
    assert [m["type"] for m in session.sent] == ["call_started", "state"]


async def test_frames_at_sends_raw_frames_as_given(
    autojump_clock: trio.testing.MockClock,
) -> None:
    odd = b"\x00\x01\x02"  # not whole 16-bit samples
    broken = '{"type": "transcript", "role": '
    fake = FakeUltravox(KEY, frames_at=[(0.2, broken), (0.1, odd)], hangup_at=0.3)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed_at, code, _ = await until_closed(ws, session.opened_at)
    assert frames[2:] == [(0.1, odd), (0.2, broken)]  # after call_started and state
    assert (closed_at, code) == (0.3, 1000)
    assert session.frames_out == [odd, broken]
    assert session.agent_audio_out == bytearray() and session.agent_frames_out == 0


def test_agent_audio_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        FakeUltravox(KEY, chunk_ms=0)
    with pytest.raises(ValueError, match="positive"):
        FakeUltravox(KEY, speak_pace=0.0)


# --- greeting, tool calls, user text --------------------------------------------------------------

TOOLS = {
    "selectedTools": [
        {
            "temporaryTool": {
                "modelToolName": "lookup",
                "description": "Look it up.",
                "dynamicParameters": [],
                "client": {},
            }
        }
    ]
}


def message(data: dict[str, Any]) -> str:
    """A data message as the fake writes it."""
    return json.dumps(data, separators=(",", ":"))


def final(text: str, ordinal: int) -> str:
    return message(
        {
            "type": "transcript",
            "role": "agent",
            "medium": "voice",
            "text": text,
            "delta": None,
            "final": True,
            "ordinal": ordinal,
        }
    )


def speech_frames(text: str, t0: float, ms: int = 100) -> list[tuple[Any, bytes]]:
    """``speech_for(text)`` as the fake sends it: 20 ms frames, one every 4 ms from ``t0``."""
    pcm = speech_for(text, ms)
    return [(pytest.approx(t0 + i * 0.004), pcm[i * 320 : (i + 1) * 320]) for i in range(ms // 20)]


def test_speech_for_cycles_the_text_bytes() -> None:
    # "Ab": 0x41, 0x62 -> (65 - 128) * 256 = -16128, (98 - 128) * 256 = -7680; 1 ms is 8 samples
    assert speech_for("Ab", 1) == (b"\x00\xc1" + b"\x00\xe2") * 4
    assert len(speech_for("")) == 1600 and speech_for("") == b"\x00\x80" * 800
    assert speech_for("yes") != speech_for("no")


async def test_greeting_goes_first_then_other_speech(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, agent_audio=[(0.0, GOODBYE[:640])], close_at=(1.0, 1011))
    body = {"firstSpeakerSettings": {"agent": {"text": "Hi!"}}}
    with trio.fail_after(BUDGET):
        async with joined(fake, body) as ws:
            session = await fake.wait_for_session()
            frames, _, _, _ = await until_closed(ws, session.opened_at)
    assert frames[2:] == [
        *speech_frames("Hi!", 0.0),
        (pytest.approx(0.02), final("Hi!", 1)),
        (pytest.approx(0.02), GOODBYE[:320]),
        (pytest.approx(0.024), GOODBYE[320:640]),
    ]
    assert [m["type"] for m in session.sent] == ["call_started", "state", "transcript"]
    assert bytes(session.agent_audio_out) == speech_for("Hi!") + GOODBYE[:640]


@pytest.mark.parametrize(
    "first_speaker", [None, {"agent": {}}, {"agent": {"text": ""}}, {"user": {}}]
)
async def test_no_greeting_text_no_greeting(
    autojump_clock: trio.testing.MockClock, first_speaker: dict[str, Any] | None
) -> None:
    fake = FakeUltravox(KEY, hangup_at=0.5)
    body = {} if first_speaker is None else {"firstSpeakerSettings": first_speaker}
    with trio.fail_after(BUDGET):
        async with joined(fake, body) as ws:
            session = await fake.wait_for_session()
            frames, _, _, _ = await until_closed(ws, session.opened_at)
    assert len(frames) == 2 and session.agent_frames_out == 0


async def test_tool_call_waits_for_its_time_and_the_callers_audio_then_the_result_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    call = FakeToolCall("lookup", {"n": 1}, say=speech_for("wait", 40), at=0.5, after_audio=3)
    fake = FakeUltravox(KEY, tool_calls=[call], delay=60, close_at=(1.0, 1011))
    received: Frames = []
    invoked = trio.Event()
    result = {
        "type": "client_tool_result",
        "invocationId": "inv-1-1",
        "result": "found",
        "responseType": "tool-response",
    }
    with trio.fail_after(BUDGET):
        async with joined(fake, TOOLS) as ws:
            session = await fake.wait_for_session()

            async def read() -> None:
                try:
                    while True:
                        frame = await ws.get_message()
                        received.append((trio.current_time() - session.opened_at, frame))
                        if isinstance(frame, str) and "client_tool_invocation" in frame:
                            invoked.set()
                except ConnectionClosed:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for at in (0.1, 0.2, 0.7):  # the third caller frame comes after `at`
                    await trio.sleep_until(session.opened_at + at)
                    await ws.send_message(b"\x00\x00" * 160)
                await invoked.wait()
                await trio.sleep_until(session.opened_at + 0.8)
                await ws.send_message(json.dumps(result))
    invocation = {
        "type": "client_tool_invocation",
        "toolName": "lookup",
        "invocationId": "inv-1-1",
        "parameters": {"n": 1},
    }
    assert received[2:] == [
        *speech_frames("wait", 0.7, 40),
        (pytest.approx(0.708), message(invocation)),
        *speech_frames("found", 0.8),
        (pytest.approx(0.82), final("lookup answered: found", 1)),
    ]
    assert session.invocations == {"inv-1-1": call}
    assert fake.tool_results == [result]
    assert fake.errors == [] and session.audio_in == 3


async def test_a_tool_the_call_did_not_select_is_not_invoked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, tool_calls=[FakeToolCall("nope", at=0.1)], hangup_at=0.5)
    with trio.fail_after(BUDGET):
        async with joined(fake, TOOLS) as ws:
            session = await fake.wait_for_session()
            frames, _, _, _ = await until_closed(ws, session.opened_at)
    assert len(frames) == 2  # call_started, state
    assert fake.errors == ["session 1: tool 'nope' is not in selectedTools ['lookup']"]
    assert session.errors == ["tool 'nope' is not in selectedTools ['lookup']"]
    assert session.invocations == {}


async def test_bad_tool_results_are_refused_and_errors_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, tool_calls=[FakeToolCall("lookup")], delay=60, close_at=(1.0, 1011))
    error = {"errorType": "undefined", "errorMessage": "no such tool"}
    results: list[dict[str, Any]] = [
        {"invocationId": "inv-9-9", "result": "x"},
        {"invocationId": "inv-1-1"},
        {"invocationId": "inv-1-1", "result": "x", "errorType": "undefined"},
        {"invocationId": "inv-1-1", "result": "x", "responseType": "hang-up"},
        {"invocationId": "inv-1-1", "errorType": "boom"},
        {"invocationId": "inv-1-1"} | error,
        {"invocationId": "inv-1-1", "result": "again"},
        {},
    ]
    with trio.fail_after(BUDGET):
        async with joined(fake, TOOLS) as ws:
            session = await fake.wait_for_session()
            await trio.sleep(0.1)
            for fields in results:
                await ws.send_message(json.dumps({"type": "client_tool_result"} | fields))
            frames, _, _, _ = await until_closed(ws, session.opened_at)
    messages = [json.loads(f) for _, f in frames if isinstance(f, str)]
    assert [m["type"] for m in messages] == [
        "call_started",
        "state",
        "client_tool_invocation",
        "transcript",
    ]
    assert messages[-1]["text"] == "lookup failed: undefined: no such tool"
    assert bytes(session.agent_audio_out) == speech_for("undefined")
    assert fake.tool_results == [{"type": "client_tool_result"} | r for r in results]
    assert [problem.split(":")[0] for problem in session.errors] == [
        "client_tool_result for an unknown invocation 'inv-9-9'",
        "client_tool_result needs a string result or an errorType",
        "client_tool_result needs a string result or an errorType",
        "unexpected responseType 'hang-up'",
        "client_tool_result needs a string result or an errorType",
        "client_tool_result for an already answered invocation 'inv-1-1'",
        "client_tool_result without an invocationId",
    ]
    assert fake.errors == [f"session 1: {problem}" for problem in session.errors]


async def test_user_text_is_recorded_and_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, delay=60, close_at=(1.0, 1011))
    texts: list[dict[str, Any]] = [
        {"type": "user_text_message", "text": "The caller pressed 1 on the keypad."},
        {"type": "user_text_message", "text": "2", "urgency": "now"},
        {"type": "user_text_message", "text": None, "urgency": "immediate"},
    ]
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            await trio.sleep(0.5)
            for text in texts:
                await ws.send_message(json.dumps(text))
            frames, _, _, _ = await until_closed(ws, session.opened_at)
    assert binary(frames) == speech_frames("The caller pressed 1 on the keypad.", 0.5)
    assert fake.user_texts == texts
    assert fake.errors == [
        'session 1: malformed user_text_message: {"type": "user_text_message", "text": "2",'
        ' "urgency": "now"}',
        'session 1: malformed user_text_message: {"type": "user_text_message", "text": null,'
        ' "urgency": "immediate"}',
    ]


# --- REST: billing, tools and tool messages -------------------------------------------------------


@asynccontextmanager
async def rest() -> AsyncIterator[tuple[FakeUltravox, httpx.AsyncClient]]:
    fake = FakeUltravox(KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        async with httpx.AsyncClient(base_url=f"{fake.base_url}/") as client:
            yield fake, client
        nursery.cancel_scope.cancel()


GOOD_BODY = {
    "systemPrompt": "",
    "medium": {"serverWebSocket": {"inputSampleRate": 8000, "outputSampleRate": 8000}},
}


async def test_get_call_answers_billed_duration_once_the_socket_closed() -> None:
    auth = {"X-API-Key": KEY}
    with trio.fail_after(5):
        async with rest() as (fake, client):
            created = (await client.post("calls", json=GOOD_BODY, headers=auth)).json()
            call_id = created["callId"]
            answers = [
                await client.get(f"calls/{call_id}"),
                await client.get(f"calls/{call_id}", headers={"X-API-Key": "uv-wrong"}),
                await client.get("calls/00000000-0000-0000-0000-000000000000", headers=auth),
                await client.post(f"calls/{call_id}", headers=auth),
            ]
            before = (await client.get(f"calls/{call_id}", headers=auth)).json()
            url = httpx.URL(created["joinUrl"])
            assert url.port is not None
            stream = await trio.open_tcp_stream(url.host, url.port)
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery, stream, url.host, url.path, message_queue_size=64
                )
                session = await fake.wait_for_session()
                during = (await client.get(f"calls/{call_id}", headers=auth)).json()
                await trio.sleep(0.2)
                await ws.send_message('{"type": "hang_up", "message": ""}')
                await session.wait_closed()
                nursery.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)
            after = (await client.get(f"calls/{call_id}", headers=auth)).json()
    assert [a.status_code for a in answers] == [401, 401, 404, 405]
    assert (before["joined"], before["billedDuration"], before["endReason"]) == (None, None, None)
    assert before["billingStatus"] == "BILLING_STATUS_PENDING"
    assert during["joined"] is not None and during["billedDuration"] is None
    assert session.joined_seconds is not None and session.joined_seconds >= 0.2
    assert after["billedDuration"] == f"{round(session.joined_seconds, 1):.1f}s"
    assert (after["billingStatus"], after["endReason"]) == ("BILLING_STATUS_BILLED", "hangup")
    assert after["callId"] == call_id and after["ended"] is not None
    assert created["billedDuration"] is None


def tool(**fields: Any) -> dict[str, Any]:
    definition = {"modelToolName": "lookup", "description": "Look it up.", "client": {}}
    return {"temporaryTool": {k: v for k, v in (definition | fields).items() if v is not None}}


def parameter(**fields: Any) -> dict[str, Any]:
    return {"name": "n", "location": "PARAMETER_LOCATION_BODY", "schema": {}} | fields


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"selectedTools": {}}, "selectedTools must be a list."),
        ({"selectedTools": [{}]}, "selectedTools[0] must set exactly one of"),
        ({"selectedTools": [3]}, "selectedTools[0] must set exactly one of"),
        ({"selectedTools": [{"toolName": "a", "toolId": "b"}]}, "must set exactly one of"),
        ({"selectedTools": [tool(modelToolName="a b")]}, "modelToolName must match"),
        ({"selectedTools": [tool(modelToolName="x" * 65)]}, "modelToolName must match"),
        ({"selectedTools": [tool(), tool()]}, "the model tool name 'lookup' is used twice."),
        ({"selectedTools": [tool(description=None)]}, "description must be a string."),
        ({"selectedTools": [tool(client=None)]}, "exactly one implementation."),
        ({"selectedTools": [tool(http={})]}, "exactly one implementation."),
        ({"selectedTools": [tool(client={"x": 1})]}, "client must be {}."),
        ({"selectedTools": [tool(timeout="41s")]}, "timeout must be a duration of at most 40s."),
        ({"selectedTools": [tool(timeout="10")]}, "timeout must be a duration of at most 40s."),
        ({"selectedTools": [tool(dynamicParameters={})]}, "dynamicParameters must be a list."),
        (
            {"selectedTools": [tool(dynamicParameters=[parameter(location="QUERY")])]},
            "location is not a ParameterLocation.",
        ),
        (
            {
                "selectedTools": [
                    tool(dynamicParameters=[parameter(location="PARAMETER_LOCATION_QUERY")])
                ]
            },
            "client tools take body parameters only.",
        ),
        (
            {"selectedTools": [tool(dynamicParameters=[parameter(schema="string")])]},
            "schema must be an object.",
        ),
        (
            {"selectedTools": [tool(dynamicParameters=[parameter(required="yes")])]},
            "required must be a boolean.",
        ),
        (
            {
                "initialMessages": [
                    {"role": "MESSAGE_ROLE_TOOL_CALL", "text": "{}", "toolName": "t"}
                ]
            },
            "initialMessages[0].invocationId is required for tool messages.",
        ),
        (
            {
                "initialMessages": [
                    {"role": "MESSAGE_ROLE_TOOL_CALL", "text": "{}", "invocationId": "i"}
                ]
            },
            "initialMessages[0].toolName is required for tool messages.",
        ),
        (
            {
                "initialMessages": [
                    {
                        "role": "MESSAGE_ROLE_TOOL_RESULT",
                        "text": "{}",
                        "invocationId": "i",
                        "toolName": "t",
                    }
                ]
            },
            "initialMessages[0] is a tool result without an earlier tool call.",
        ),
        ({"firstSpeakerSettings": {"agent": {"greeting": "hi"}}}, "may set only"),
        ({"firstSpeakerSettings": {"agent": {"text": 1}}}, "agent.text must be a string."),
        ({"firstSpeakerSettings": {"user": {"text": "hi"}}}, "user may set only ['fallback']."),
    ],
)
async def test_fake_refuses_bad_tools_tool_messages_and_greetings(
    extra: dict[str, Any], detail: str
) -> None:
    with trio.fail_after(5):
        async with rest() as (fake, client):
            answer = await client.post("calls", json=GOOD_BODY | extra, headers={"X-API-Key": KEY})
    assert answer.status_code == 400
    assert detail in answer.json()["detail"]
    assert fake.calls == {}


async def test_fake_records_tools_tool_messages_and_greeting() -> None:
    extra = {
        "selectedTools": [
            tool(dynamicParameters=[parameter(required=True)], timeout="11s"),
            {"toolName": "hangUp"},
        ],
        "initialMessages": [
            {"role": "MESSAGE_ROLE_TOOL_CALL", "text": "{}", "invocationId": "i", "toolName": "t"},
            {
                "role": "MESSAGE_ROLE_TOOL_RESULT",
                "text": "ok",
                "invocationId": "i",
                "toolName": "t",
            },
        ],
        "firstSpeakerSettings": {"agent": {"text": "Hello!", "uninterruptible": True}},
    }
    with trio.fail_after(5):
        async with rest() as (fake, client):
            answer = await client.post("calls", json=GOOD_BODY | extra, headers={"X-API-Key": KEY})
    assert answer.status_code == 201
    [request] = fake.calls.values()
    assert request.selected_tools == extra["selectedTools"]
    assert request.tool_names == ["lookup"]
    assert request.first_speaker == extra["firstSpeakerSettings"]
    assert request.greeting == "Hello!"
    assert request.initial_messages == extra["initialMessages"]


# --- the fault knobs every fake shares (named as FakeOpenAIRealtime's) ---------------------------


def kinds(frames: Frames) -> list[tuple[float, str]]:
    """The data messages' arrival times and types."""
    return [(t, json.loads(f)["type"]) for t, f in frames if isinstance(f, str)]


async def test_speech_started_at_sends_playback_clear_buffer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, speech_started_at=[0.3, 0.1], clear_at=0.2, hangup_at=0.5)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            frames, closed_at, code, _ = await until_closed(ws, session.opened_at)
    assert kinds(frames)[2:] == [
        (0.1, "playback_clear_buffer"),
        (0.2, "playback_clear_buffer"),
        (0.3, "playback_clear_buffer"),
    ]
    assert (closed_at, code) == (0.5, 1000)


async def test_close_at_sends_close_reason_and_only_session_scopes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, close_at=(0.4, 1011), close_reason="gone fishing", only_session=1)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            _, closed_at, code, reason = await until_closed(ws, session.opened_at)
        async with joined(fake) as ws:  # the second call is not scripted: nothing drops it
            second = await fake.wait_for_session(2)
            with trio.move_on_after(5):
                await until_closed(ws, second.opened_at)
    assert (closed_at, code, reason) == (0.4, 1011, "gone fishing")
    assert (session.close_code, second.close_code) == (1011, 1000)  # 1000: our own close


async def test_stop_reading_at_answers_no_more_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, stop_reading_at=0.5)
    with trio.fail_after(BUDGET):
        async with joined(fake) as ws:
            session = await fake.wait_for_session()
            await ws.ping()  # answered at once
            answered_by = trio.current_time() - session.opened_at
            await trio.sleep_until(session.opened_at + 0.5)
            with trio.move_on_after(10) as unanswered:
                await ws.ping()
            await trio.aclose_forcefully(session.stream)  # else our close waits for its answer
    assert answered_by == 0
    assert unanswered.cancelled_caught


async def test_handshake_delay_holds_the_scripted_call_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUltravox(KEY, handshake_delay=0.7, only_session=2)
    took = []
    with trio.fail_after(BUDGET):
        for _ in range(2):
            began = trio.current_time()
            async with joined(fake):
                took.append(trio.current_time() - began)
    assert took == [0, 0.7]


async def test_refuse_status_refuses_the_scripted_post_only() -> None:
    auth = {"X-API-Key": KEY}
    with trio.fail_after(5):
        async with rest() as (fake, client):
            fake.refuse_status, fake.only_session = 503, 2
            answers = [await client.post("calls", json=GOOD_BODY, headers=auth) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 503, 201]
    assert [r.number for r in fake.requests] == [1, 2, 3]
