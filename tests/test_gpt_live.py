"""The GPT-Live codec: exact frames in tables, every client frame validated against the ``openai``
package's ``types.live.ClientEvent`` (3.57.0), server frames against ``ServerEvent``, and
hypothesis fuzzing of ``decode`` (only ``RemoteProtocolError`` may escape)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.live import ClientEvent, ServerEvent
from pydantic import BaseModel, TypeAdapter

from voxbridge.agents import AgentConfig
from voxbridge.errors import BadAudio, Reason, RemoteProtocolError
from voxbridge.providers.events import (
    AgentAudio,
    AgentHangup,
    ProviderError,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
)
from voxbridge.providers.gpt_live import (
    GPT_LIVE_URL,
    GREETING_PROMPT,
    MAX_HISTORY_MESSAGES,
    MAX_HISTORY_TOKENS,
    GptLiveCodec,
    GptLiveProvider,
    estimate_tokens,
    gpt_live_endpoint,
    history_input,
)
from voxbridge.tools import Tool

CLIENT: TypeAdapter[Any] = TypeAdapter(ClientEvent)
SERVER: TypeAdapter[Any] = TypeAdapter(ServerEvent)
WEATHER = Tool(
    "get_weather",
    "The weather in a city, now.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
SESSION = {"id": "sess_1", "expires_at": 1_800_000_000, "model": "gpt-live-1", "status": "active"}


def extras(value: Any, path: str = "") -> list[str]:
    """Every field, anywhere in a validated model, that its class does not declare."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{key}" for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += extras(item, f"{path}[{index}]")
    return found


def client_event(frame: str | bytes) -> dict[str, Any]:
    """``frame`` validated as a GPT-Live client event, strictly (no undeclared field)."""
    assert isinstance(frame, str)
    event = json.loads(frame)
    model = CLIENT.validate_python(event)
    assert model.type == event["type"]
    assert extras(model) == [], extras(model)
    return dict(event)


def server(event: dict[str, Any]) -> str:
    model = SERVER.validate_python(event)
    assert model.type == event["type"]
    return json.dumps(event)


# --- opening ------------------------------------------------------------------------------------


def test_session_start_exact() -> None:
    codec = GptLiveCodec(instructions="be brief", voice="cedar")
    frames = codec.opening([], first=True)
    assert [client_event(f) for f in frames] == [
        {
            "type": "session.start",
            "session": {
                "model": "gpt-live-1",
                "audio": {
                    "format": {"type": "audio/pcmu", "rate": 8000},
                    "output": {"voice": "cedar"},
                },
                "instructions": "be brief",
            },
        }
    ]


STARTED = server({"type": "session.started", "event_id": "e0", "session": SESSION})


def test_greeting_is_commentary_after_session_started_in_the_first_session_only() -> None:
    codec = GptLiveCodec(greeting="Hello, Acme here.")
    assert codec.awaits_acknowledgement
    (start,) = (client_event(f) for f in codec.opening([], first=True))
    assert "instructions" not in start["session"]  # empty: server defaults
    # "Send session.start first and wait for session.started before application commands"
    for early in (
        server({"type": "session.usage.updated", "event_id": "u", "usage": {"seconds": 0}}),
        json.dumps({"type": "error", "error": {"code": "x"}}),
        "not json",
        b"\x00",
    ):
        assert codec.acknowledged(early) is None
    (greet,) = (client_event(f) for f in codec.acknowledged(STARTED) or [])
    assert greet == {
        "type": "session.commentary.append",
        "content": GREETING_PROMPT + "Hello, Acme here.",
        "delegation_id": None,
    }
    assert codec.acknowledged(STARTED) == []  # said once
    assert codec.decode(STARTED) is None  # the call still decodes the frame: nothing to act on
    # a resumed session never greets again, with or without a history to replay
    for history in ([], [Transcript("caller", "hi")]):
        resumed = GptLiveCodec(greeting="Hello, Acme here.")
        assert len(resumed.opening(history, first=False)) == 1
        assert resumed.acknowledged(STARTED) == []


def test_history_is_session_input() -> None:
    history = [
        Transcript("caller", "what's the weather"),
        ToolExchange("c1", "get_weather", '{"city":"Oslo"}', '"rain"'),
        Transcript("agent", "It rains."),
        Transcript("caller", ""),
        Transcript("dtmf", "12#"),
    ]
    start = client_event(GptLiveCodec().opening(history, first=False)[0])
    assert start["session"]["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "what's the weather"}],
        },
        {
            "type": "message",
            "role": "developer",
            "content": [
                {
                    "type": "input_text",
                    "text": 'Tool call earlier in this call: get_weather({"city":"Oslo"}) -> "rain"',
                }
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "It rains."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "The caller pressed 1 2 # on the keypad."}],
        },
    ]


def test_history_keeps_the_most_recent_128_messages() -> None:
    history = [Transcript("caller", f"line {n}") for n in range(300)]
    kept = history_input(history)
    assert len(kept) == MAX_HISTORY_MESSAGES
    assert kept[0]["content"][0]["text"] == "line 172"
    assert kept[-1]["content"][0]["text"] == "line 299"
    client_event(GptLiveCodec().session_start(history))


def test_history_keeps_the_most_recent_lines_within_the_token_budget() -> None:
    line = "x" * 3000  # 1000 + 8 estimated tokens each: 8 fit in 8,192
    history = [Transcript("agent", f"{n}{line}") for n in range(20)]
    kept = history_input(history)
    assert len(kept) == 8
    assert kept[-1]["content"][0]["text"].startswith("19")
    assert sum(estimate_tokens(m["content"][0]["text"]) for m in kept) <= MAX_HISTORY_TOKENS
    # a newest line too long for the budget alone: nothing older is replayed past it
    assert history_input([Transcript("caller", "a"), Transcript("agent", "y" * 30_000)]) == []


def test_history_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError):
        GptLiveCodec().opening([Transcript("system", "x")], first=False)


def test_tools_are_delegated_to_a_responses_backend() -> None:
    codec = GptLiveCodec(tools=[WEATHER], tools_model="gpt-5-mini")
    start = client_event(codec.session_start())
    assert start["session"]["delegation"] == {
        "type": "responses",
        "responses": {
            "model": "gpt-5-mini",
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "The weather in a city, now.",
                    "parameters": dict(WEATHER.parameters),
                }
            ],
        },
    }
    no_backend = client_event(GptLiveCodec(tools=[WEATHER]).session_start())
    assert "delegation" not in no_backend["session"]


@given(instructions=st.text(), voice=st.text(min_size=1), greeting=st.text())
def test_opening_always_validates(instructions: str, voice: str, greeting: str) -> None:
    codec = GptLiveCodec(instructions=instructions, voice=voice, greeting=greeting)
    for frame in [*codec.opening([], first=True), *(codec.acknowledged(STARTED) or [])]:
        client_event(frame)


# --- the hot path and commands ------------------------------------------------------------------


@given(payload=st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()))
def test_audio_passes_twilio_payload_through(payload: str) -> None:
    assert client_event(GptLiveCodec.audio(payload)) == {
        "type": "session.input_audio.append",
        "audio": payload,
    }


def test_commands_exact() -> None:
    codec = GptLiveCodec()
    exchange = ToolExchange("call_1", "get_weather", '{"city":"Oslo"}', '"rain"')
    assert [client_event(f) for f in codec.tool_result(exchange, known=True)] == [
        {
            "type": "response.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '"rain"'},
        },
        {"type": "response.create"},
    ]
    assert [client_event(f) for f in codec.tool_result(exchange, known=False)] == [
        {
            "type": "session.commentary.append",
            "content": 'Tool call earlier in this call: get_weather({"city":"Oslo"}) -> "rain"',
            "delegation_id": None,
        }
    ]
    assert [client_event(f) for f in codec.dtmf("5*")] == [
        {
            "type": "session.instructions.append",
            "content": "The caller pressed 5 * on the keypad.",
            "delegation_id": None,
        }
    ]
    assert codec.interrupt([Truncation("item", 300)]) == []
    assert not codec.close_requested
    assert [client_event(f) for f in codec.closing()] == [{"type": "session.close"}]
    assert codec.close_requested


# --- decode -------------------------------------------------------------------------------------


def test_decode_audio() -> None:
    codec = GptLiveCodec()
    frame = server({"type": "session.output_audio.delta", "delta": "//9/fw=="})
    assert codec.decode(frame) == AgentAudio(b"\xff\xff\x7f\x7f")
    assert codec.decode(server({"type": "session.output_audio.delta", "delta": ""})) is None
    for bad in ("QUJ", "@@@@", "QUJD\n"):
        with pytest.raises(BadAudio):
            codec.decode(json.dumps({"type": "session.output_audio.delta", "delta": bad}))
    with pytest.raises(BadAudio):
        codec.decode(json.dumps({"type": "session.output_audio.delta", "delta": 5}))


def _transcript(kind: str, text: str, at: int) -> str:
    return server(
        {"type": kind, "delta": text, "start_ms": at, "end_ms": at + 100, "event_id": f"e{at}"}
    )


def test_transcript_lines_end_when_the_speaker_changes() -> None:
    codec = GptLiveCodec()
    caller, agent = "session.input_transcript.delta", "session.output_transcript.delta"
    assert codec.decode(_transcript(caller, "what is ", 0)) is None
    assert codec.decode(_transcript(caller, "the time?", 100)) is None
    assert codec.decode(_transcript(agent, " Noon", 200)) == Transcript(
        "caller", "what is the time?"
    )
    assert codec.decode(_transcript(agent, ".", 300)) is None
    assert codec.decode(_transcript(caller, "thanks", 400)) == Transcript("agent", "Noon.")
    assert codec.pending == ("caller", "thanks")


def test_the_last_line_is_final_when_the_session_ends() -> None:
    # No ServerEvent ends a turn: the line still being gathered is final at flush (the link
    # calls it when it stops reading the session: a drop, a recycle, the end of the call).
    codec = GptLiveCodec(greeting="Hi")
    assert codec.decode(_transcript("session.output_transcript.delta", "Hi, Acme ", 0)) is None
    assert codec.decode(_transcript("session.output_transcript.delta", "here.", 100)) is None
    codec.closing()
    assert codec.flush() == [Transcript("agent", "Hi, Acme here.")]
    assert codec.pending is None and codec.flush() == []  # given once
    blank = GptLiveCodec()
    blank.decode(_transcript("session.input_transcript.delta", "  ", 0))
    assert blank.flush() == []


def test_a_delegation_ends_the_agent_line() -> None:
    # the model hands work to the backend: what it said before is a line of its own
    codec = GptLiveCodec()
    assert codec.decode(_transcript("session.output_transcript.delta", "Let me check.", 0)) is None
    created = server(
        {
            "type": "session.delegation.created",
            "event_id": "d",
            "offset_ms": 100,
            "delegation": {"id": "deleg_1", "target": "responses", "type": "delegation"},
        }
    )
    assert codec.decode(created) == Transcript("agent", "Let me check.")
    assert codec.decode(created) is None and codec.pending is None
    assert (
        codec.decode(_transcript("session.output_transcript.delta", "It ships today.", 900)) is None
    )
    assert codec.flush() == [Transcript("agent", "It ships today.")]


def test_decode_usage_reports_increments_of_the_cumulative_seconds() -> None:
    codec = GptLiveCodec()

    def usage(seconds: float) -> str:
        return server(
            {"type": "session.usage.updated", "event_id": "e", "usage": {"seconds": seconds}}
        )

    assert codec.decode(usage(3)) == Usage((("billed_seconds", 3.0),))
    assert codec.decode(usage(3)) is None
    assert codec.decode(usage(5.5)) == Usage((("billed_seconds", 2.5),))
    for bad in ({"seconds": "5"}, {"seconds": True}, {}, "x"):
        with pytest.raises(RemoteProtocolError):
            codec.decode(json.dumps({"type": "session.usage.updated", "usage": bad}))


def _closed(reason: str, seconds: float = 10) -> str:
    return server(
        {
            "type": "session.closed",
            "event_id": "e",
            "reason": reason,
            "session": SESSION,
            "usage": {"seconds": seconds},
        }
    )


@pytest.mark.parametrize(
    ("reason", "event", "close"),
    [
        ("expired", Usage((("billed_seconds", 10.0),)), Reason.UPSTREAM_CLOSED),
        ("connection_lost", Usage((("billed_seconds", 10.0),)), Reason.UPSTREAM_CLOSED),
        ("close_requested", Usage((("billed_seconds", 10.0),)), Reason.AGENT_HANGUP),
        (
            "remote_hangup",
            AgentHangup("GPT-Live session closed: remote_hangup"),
            Reason.AGENT_HANGUP,
        ),
        (
            "content",
            ProviderError("content", "GPT-Live closed the session: safety filter"),
            Reason.UPSTREAM_REJECTED,
        ),
    ],
)
def test_session_closed_reasons(reason: str, event: object, close: Reason) -> None:
    codec = GptLiveCodec()
    assert codec.close_reason(1000) is Reason.UPSTREAM_CLOSED  # no session.closed yet
    assert codec.decode(_closed(reason)) == event
    assert codec.close_reason(1000) is close
    assert codec.close_reason(1011) is close


def test_close_codes_without_session_closed() -> None:
    codec = GptLiveCodec()
    assert codec.close_reason(1008) is Reason.UPSTREAM_REJECTED
    assert codec.close_reason(1011) is Reason.UPSTREAM_CLOSED
    with pytest.raises(RemoteProtocolError):
        codec.decode(json.dumps({"type": "session.closed", "reason": "bored", "usage": {}}))


def test_decode_tool_call_from_the_responses_backend() -> None:
    codec = GptLiveCodec()
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
        "status": "completed",
    }
    nested = {"type": "response.output_item.done", "output_index": 0, "item": item}
    frame = server(
        {"type": "response.event", "event_id": "e", "event": nested, "delegation_id": "d"}
    )
    assert codec.decode(frame) == ToolCall("call_1", "get_weather", '{"city":"Oslo"}')
    other = {"type": "response.output_text.delta", "delta": "hi"}
    assert codec.decode(server({"type": "response.event", "event_id": "e", "event": other})) is None


def test_decode_error_and_ignored_events() -> None:
    codec = GptLiveCodec()
    error = {
        "type": "error",
        "event_id": "e",
        "error": {"code": "unknown_parameter", "message": "no", "type": "invalid_request_error"},
    }
    assert codec.decode(server(error)) == ProviderError("unknown_parameter", "no")
    started = {"type": "session.started", "event_id": "e", "session": SESSION}
    assert codec.decode(json.dumps(started)) is None
    assert codec.decode('{"type":"something.new"}') is None
    for bad in (b"{}", "[]", "{", '{"type":1}'):
        with pytest.raises(RemoteProtocolError):
            codec.decode(bad)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
MAPPED = [
    "session.output_audio.delta",
    "session.input_transcript.delta",
    "session.output_transcript.delta",
    "session.usage.updated",
    "session.closed",
    "response.event",
    "error",
]
FIELDS = ["delta", "usage", "reason", "event", "error", "seconds"]


def _decode_or_protocol_error(frame: str | bytes) -> None:
    try:
        GptLiveCodec().decode(frame)
    except RemoteProtocolError:  # BadAudio included
        pass


@given(frame=st.text() | st.binary())
def test_decode_any_frame_fails_only_with_remote_protocol_error(frame: str | bytes) -> None:
    _decode_or_protocol_error(frame)


@given(frame=st.text() | st.binary() | JSON.map(json.dumps))
def test_acknowledged_never_raises(frame: str | bytes) -> None:
    codec = GptLiveCodec(greeting="Hi")
    codec.opening([], first=True)
    assert codec.acknowledged(frame) in (None, [codec.commentary(GREETING_PROMPT + "Hi")])


@given(
    kind=st.sampled_from(MAPPED),
    fields=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4),
    nested=st.dictionaries(st.sampled_from(["type", "item", "seconds"]), JSON, max_size=3),
)
def test_decode_mapped_events_fail_only_with_remote_protocol_error(
    kind: str, fields: dict[str, object], nested: dict[str, object]
) -> None:
    _decode_or_protocol_error(json.dumps({**fields, "type": kind}))
    for field in ("usage", "event"):
        _decode_or_protocol_error(json.dumps({**fields, field: nested, "type": kind}))
    item = {**nested, "type": "function_call"}
    event = {"type": "response.output_item.done", "item": item}
    _decode_or_protocol_error(json.dumps({"type": "response.event", "event": event}))


# --- the provider -------------------------------------------------------------------------------


async def test_provider_session_and_for_agent() -> None:
    endpoint = gpt_live_endpoint(api_key="sk-x")
    assert endpoint.url == GPT_LIVE_URL
    assert dict(endpoint.headers) == {"Authorization": "Bearer sk-x"}
    assert "sk-x" not in repr(endpoint)
    provider = GptLiveProvider(endpoint, instructions="base")
    assert provider.name == "gpt-live"
    agent = AgentConfig(voice="sage", greeting="Hi", instructions="agent")
    configured = provider.for_agent(agent, [WEATHER])
    assert provider.voice == "marin" and provider.tools == ()
    session = await configured.session([], first=True)
    codec = session.codec
    assert isinstance(codec, GptLiveCodec)
    assert (codec.voice, codec.instructions, codec.greeting) == ("sage", "agent", "Hi")
    assert codec.tools == (WEATHER,)
    assert session.endpoint is endpoint


def test_tools_without_a_tools_model_are_warned_about() -> None:
    provider = GptLiveProvider(gpt_live_endpoint())
    assert provider.tools_warning(["lookup_order", "end_call"]) == (
        "lookup_order, end_call not declared to GPT-Live: the Live model runs tools only through "
        "a Responses backend, and --gpt-live-tools-model is not set"
    )
    assert provider.tools_warning([]) is None
    backed = GptLiveProvider(gpt_live_endpoint(), tools_model="gpt-5-mini")
    assert backed.tools_warning(["lookup_order"]) is None
