"""The OpenAI Realtime codec and provider, checked against the official ``openai`` package's types.

Oracle: every client event the codec builds validates against ``RealtimeClientEvent`` of its
flavour (GA ``openai.types.realtime``, beta ``openai.types.beta.realtime``), as the variant its
``type`` names, with no field the model does not know (the openai models allow extras, so a
misspelt field would otherwise pass silently) and a lossless round trip. Every server frame fed to
the decoder validates against that flavour's ``RealtimeServerEvent`` first.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.beta.realtime import RealtimeClientEvent as BetaClientEvent
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeClientEvent as GAClientEvent
from openai.types.realtime import RealtimeServerEvent as GAServerEvent
from openai.types.realtime.realtime_audio_formats import AudioPCMU
from openai.types.realtime.realtime_audio_input_turn_detection import ServerVad
from openai.types.realtime.realtime_conversation_item_assistant_message import (
    RealtimeConversationItemAssistantMessage,
)
from openai.types.realtime.realtime_conversation_item_user_message import (
    RealtimeConversationItemUserMessage,
)
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
from pydantic import BaseModel, TypeAdapter

from voxbridge.errors import Reason, RemoteProtocolError
from voxbridge.providers.base import ProviderSession
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.providers.events import AgentAudio, ProviderError, SpeechStarted, Transcript
from voxbridge.providers.openai_realtime import (
    BETA_HEADER,
    OpenAIProvider,
    OpenAIRealtimeCodec,
    openai_endpoint,
)

CLIENT = {"ga": TypeAdapter(GAClientEvent), "beta": TypeAdapter(BetaClientEvent)}
SERVER = {"ga": TypeAdapter(GAServerEvent), "beta": TypeAdapter(BetaServerEvent)}
FLAVOURS = ["ga", "beta"]
KEY = "sk-test-0123456789abcdef"


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


def client_event(flavour: str, frame: str | bytes) -> BaseModel:
    """``frame`` validated as a client event of ``flavour``, strictly."""
    assert isinstance(frame, str), "OpenAI Realtime client events are text frames"
    event = json.loads(frame)
    model = CLIENT[flavour].validate_python(event)
    assert isinstance(model, BaseModel)
    assert model.type == event["type"]
    assert extras(model) == [], f"fields the {flavour} schema does not know: {extras(model)}"
    assert model.model_dump(mode="json", exclude_unset=True) == event
    return model


def server_frame(flavour: str, event: dict[str, Any]) -> str:
    """``event`` as a frame, after checking it is a real server event of ``flavour``."""
    model = SERVER[flavour].validate_python(event)
    assert model.type == event["type"]
    return json.dumps(event)


# --- session.update -----------------------------------------------------------------------------


def test_ga_session_update_is_the_documented_shape() -> None:
    codec = OpenAIRealtimeCodec(
        "ga",
        model="gpt-realtime",
        voice="marin",
        instructions="Be brief.",
        transcription_model="gpt-4o-transcribe",
    )
    [frame] = codec.opening([])
    assert json.loads(frame) == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad"},
                    "transcription": {"model": "gpt-4o-transcribe"},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
            "instructions": "Be brief.",
        },
    }
    model = client_event("ga", frame)
    session = model.session  # type: ignore[attr-defined]
    assert isinstance(session, RealtimeSessionCreateRequest)
    assert session.audio is not None and session.audio.input is not None
    assert session.audio.output is not None
    # the discriminated unions picked the variants we meant, not a lookalike
    assert isinstance(session.audio.input.format, AudioPCMU)
    assert isinstance(session.audio.output.format, AudioPCMU)
    assert isinstance(session.audio.input.turn_detection, ServerVad)
    assert session.audio.input.transcription is not None
    assert session.audio.input.transcription.model == "gpt-4o-transcribe"


def test_beta_session_update_is_the_documented_shape() -> None:
    codec = OpenAIRealtimeCodec(
        "beta", voice="alloy", instructions="Hi.", transcription_model="whisper-1"
    )
    [frame] = codec.opening([])
    assert json.loads(frame) == {
        "type": "session.update",
        "session": {
            "turn_detection": {"type": "server_vad"},
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_ulaw",
            "voice": "alloy",
            "instructions": "Hi.",
            "modalities": ["text", "audio"],
            "input_audio_transcription": {"model": "whisper-1"},
        },
    }
    model = client_event("beta", frame)
    assert model.session.input_audio_format == "g711_ulaw"  # type: ignore[attr-defined]


def test_each_flavour_rejects_the_others_session_update() -> None:
    """The shapes really differ: the GA union refuses the beta session (no ``type``), and the GA
    session's fields are all unknown to beta (accepted only as extras)."""
    ga, beta = OpenAIRealtimeCodec("ga"), OpenAIRealtimeCodec("beta")
    with pytest.raises(ValueError):
        CLIENT["ga"].validate_python(json.loads(beta.session_update()))
    with pytest.raises(AssertionError, match="does not know"):
        client_event("beta", ga.session_update())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_session_update_overrides(flavour: str) -> None:
    codec = OpenAIRealtimeCodec(flavour, voice="alloy", instructions="a")  # type: ignore[arg-type]
    event = json.loads(codec.session_update(voice="cedar", instructions="b"))
    client_event(flavour, json.dumps(event))
    text = json.dumps(event)
    assert "cedar" in text and '"b"' in text and "alloy" not in text


@pytest.mark.parametrize("flavour", FLAVOURS)
@given(instructions=st.text(), voice=st.text(min_size=1))
def test_session_update_escapes_any_text(flavour: str, instructions: str, voice: str) -> None:
    codec = OpenAIRealtimeCodec(flavour, voice=voice, instructions=instructions)  # type: ignore[arg-type]
    frame = codec.session_update()
    frame.encode("utf-8")  # sendable as a text frame, even with lone surrogates
    model = client_event(flavour, frame)
    assert model.session.instructions == instructions  # type: ignore[attr-defined]


# --- history ------------------------------------------------------------------------------------

HISTORY = [
    Transcript("caller", "Hello, is this the bakery?"),
    Transcript("agent", 'Yes! We have "fresh" bread.'),
    Transcript("caller", ""),  # an empty line adds nothing: skipped
    Transcript("agent", "Anything else? ✓"),
]


@pytest.mark.parametrize(
    ("flavour", "agent_part"),
    [("ga", "output_text"), ("beta", "text")],
)
def test_opening_replays_history_as_items(flavour: str, agent_part: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    frames = codec.opening(HISTORY)
    assert json.loads(frames[0])["type"] == "session.update"
    items = [json.loads(frame) for frame in frames[1:]]
    assert items == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": role,
                "content": [{"type": part, "text": text}],
            },
        }
        for role, part, text in [
            ("user", "input_text", HISTORY[0].text),
            ("assistant", agent_part, HISTORY[1].text),
            ("assistant", agent_part, HISTORY[3].text),
        ]
    ]
    for frame in frames:
        client_event(flavour, frame)


def test_ga_history_items_are_the_message_variants() -> None:
    codec = OpenAIRealtimeCodec("ga")
    user, assistant = (client_event("ga", codec.history_item(line)) for line in HISTORY[:2])
    assert isinstance(user.item, RealtimeConversationItemUserMessage)  # type: ignore[attr-defined]
    assert isinstance(assistant.item, RealtimeConversationItemAssistantMessage)  # type: ignore[attr-defined]


def test_history_content_types_are_flavour_specific() -> None:
    """GA assistant text is ``output_text``, beta's is ``text``: each union refuses the other."""
    ga = json.loads(OpenAIRealtimeCodec("ga").history_item(HISTORY[1]))
    beta = json.loads(OpenAIRealtimeCodec("beta").history_item(HISTORY[1]))
    with pytest.raises(ValueError):
        CLIENT["ga"].validate_python(beta)
    with pytest.raises(ValueError):
        CLIENT["beta"].validate_python(ga)


def test_history_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError, match="role"):
        OpenAIRealtimeCodec().opening([Transcript("system", "x")])


@pytest.mark.parametrize("flavour", FLAVOURS)
@given(lines=st.lists(st.tuples(st.sampled_from(["caller", "agent"]), st.text()), max_size=5))
def test_any_history_validates(flavour: str, lines: list[tuple[str, str]]) -> None:
    history = [Transcript(role, text) for role, text in lines]
    frames = OpenAIRealtimeCodec(flavour).opening(history)  # type: ignore[arg-type]
    assert len(frames) == 1 + sum(1 for line in history if line.text)
    for frame, line in zip(frames[1:], [line for line in history if line.text], strict=True):
        model = client_event(flavour, frame)
        assert model.item.content[0].text == line.text  # type: ignore[attr-defined]


# --- audio, barge-in, the end -------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@given(payload=st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()))
def test_audio_is_an_append(flavour: str, payload: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    frame = codec.audio(payload)
    assert json.loads(frame) == {"type": "input_audio_buffer.append", "audio": payload}
    assert client_event(flavour, frame).audio == payload  # type: ignore[attr-defined]
    assert codec.append_audio(payload) == frame  # the former name


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_interrupt_truncates_the_heard_audio(flavour: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    [frame] = codec.interrupt("item_abc", 1234)
    assert json.loads(frame) == {
        "type": "conversation.item.truncate",
        "item_id": "item_abc",
        "content_index": 0,
        "audio_end_ms": 1234,
    }
    client_event(flavour, frame)
    assert json.loads(codec.interrupt("item_abc", -5)[0])["audio_end_ms"] == 0
    assert codec.interrupt(None, 500) == []


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 4000])
def test_every_close_but_a_refusal_is_a_resumable_drop(flavour: str, code: int) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    assert codec.close_reason(code) is Reason.UPSTREAM_CLOSED
    assert codec.closing() == []


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_policy_close_is_a_refusal(flavour: str) -> None:
    # 1008 (RFC 6455 7.4.1, policy violation) is how a key or an account is refused mid-session.
    assert OpenAIRealtimeCodec(flavour).close_reason(1008) is Reason.UPSTREAM_REJECTED  # type: ignore[arg-type]


def test_codec_rejects_unknown_flavours() -> None:
    with pytest.raises(ValueError, match="flavour"):
        OpenAIRealtimeCodec("v2")  # type: ignore[arg-type]


# --- decode -------------------------------------------------------------------------------------

IDS = {
    "event_id": "event_1",
    "response_id": "resp_1",
    "item_id": "item_1",
    "output_index": 0,
    "content_index": 0,
}


def decode_cases(flavour: str) -> list[tuple[dict[str, Any], object]]:
    audio_delta = "response.output_audio.delta" if flavour == "ga" else "response.audio.delta"
    transcript_done = (
        "response.output_audio_transcript.done"
        if flavour == "ga"
        else "response.audio_transcript.done"
    )
    audio_done = "response.output_audio.done" if flavour == "ga" else "response.audio.done"
    return [
        ({"type": audio_delta, **IDS, "delta": "//7+/Q=="}, AgentAudio("//7+/Q==", "item_1")),
        (
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": "e",
                "item_id": "i",
                "audio_start_ms": 740,
            },
            SpeechStarted(740),
        ),
        ({"type": transcript_done, **IDS, "transcript": "Sure."}, Transcript("agent", "Sure.")),
        (
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "e",
                "item_id": "i",
                "content_index": 0,
                "transcript": "I'd like bread.",
                "usage": {"type": "duration", "seconds": 1.5},
            },
            Transcript("caller", "I'd like bread."),
        ),
        (
            {
                "type": "error",
                "event_id": "e",
                "error": {
                    "type": "invalid_request_error",
                    "code": "session_expired",
                    "message": "Your session hit the maximum duration of 60 minutes.",
                },
            },
            ProviderError(
                "session_expired", "Your session hit the maximum duration of 60 minutes."
            ),
        ),
        (
            {
                "type": "error",
                "event_id": "e",
                "error": {"type": "server_error", "message": "boom"},
            },
            ProviderError("server_error", "boom"),
        ),
        # events the bridge does not act on
        ({"type": audio_done, **IDS}, None),
        (
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": "e",
                "item_id": "i",
                "audio_end_ms": 900,
            },
            None,
        ),
        ({"type": "input_audio_buffer.committed", "event_id": "e", "item_id": "i"}, None),
        ({"type": "response.created", "event_id": "e", "response": {"id": "resp_1"}}, None),
        (
            {
                "type": "response.done",
                "event_id": "e",
                "response": {"id": "resp_1", "status": "cancelled"},
            },
            None,
        ),
        (
            {
                "type": "conversation.item.truncated",
                "event_id": "e",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": 10,
            },
            None,
        ),
        (
            {
                "type": "rate_limits.updated",
                "event_id": "e",
                "rate_limits": [
                    {"name": "requests", "limit": 1, "remaining": 1, "reset_seconds": 1.0}
                ],
            },
            None,
        ),
    ]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_decode_maps_the_server_events(flavour: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    for event, expected in decode_cases(flavour):
        assert codec.decode(server_frame(flavour, event)) == expected, event["type"]


def test_decode_maps_ga_only_lifecycle_events_to_nothing() -> None:
    codec = OpenAIRealtimeCodec("ga")
    item = {"id": "item_1", "type": "message", "role": "assistant", "content": []}
    for event in [
        {"type": "session.created", "event_id": "e", "session": {"type": "realtime"}},
        {"type": "conversation.item.added", "event_id": "e", "item": item},
        {"type": "conversation.item.done", "event_id": "e", "item": item},
    ]:
        assert codec.decode(server_frame("ga", event)) is None


def test_either_flavour_decodes_both_names() -> None:
    """A GA codec talking to a beta service (or the reverse) still hears the audio."""
    for codec in (OpenAIRealtimeCodec("ga"), OpenAIRealtimeCodec("beta")):
        for kind in ("response.output_audio.delta", "response.audio.delta"):
            assert codec.decode(
                json.dumps({"type": kind, "delta": "AA==", "item_id": "x"})
            ) == AgentAudio("AA==", "x")


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type": "response.output_audio.delta", "delta": "AA=="}',  # binary frame
        "",
        "not json",
        "[]",
        "42",
        '{"no": "type"}',
        '{"type": 7}',
        '{"type": "response.output_audio.delta", "delta": 5}',
        '{"type": "response.audio.delta"}',
        "[" * 100_000,
    ],
)
def test_malformed_frames_raise_remote_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        OpenAIRealtimeCodec().decode(frame)


def test_decode_tolerates_odd_optional_fields() -> None:
    codec = OpenAIRealtimeCodec()
    assert codec.decode(
        '{"type":"input_audio_buffer.speech_started","audio_start_ms":true}'
    ) == SpeechStarted(None)
    assert codec.decode('{"type":"response.output_audio_transcript.done"}') == Transcript(
        "agent", ""
    )
    assert codec.decode('{"type":"error","error":"nope"}') == ProviderError("", "")
    assert codec.decode(
        '{"type":"response.output_audio.delta","delta":"AA==","item_id":3}'
    ) == AgentAudio("AA==", None)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
MAPPED = [
    "response.output_audio.delta",
    "response.audio.delta",
    "input_audio_buffer.speech_started",
    "response.output_audio_transcript.done",
    "response.audio_transcript.done",
    "conversation.item.input_audio_transcription.completed",
    "error",
]


def _decode_or_protocol_error(frame: str | bytes) -> None:
    try:
        event = OpenAIRealtimeCodec().decode(frame)
    except RemoteProtocolError:
        return
    assert event is None or isinstance(
        event, AgentAudio | SpeechStarted | Transcript | ProviderError
    )


@given(frame=st.text() | st.binary())
def test_decode_any_frame_fails_only_with_remote_protocol_error(frame: str | bytes) -> None:
    _decode_or_protocol_error(frame)


@given(value=JSON)
def test_decode_any_json_fails_only_with_remote_protocol_error(value: object) -> None:
    _decode_or_protocol_error(json.dumps(value))


@given(
    kind=st.sampled_from(MAPPED),
    fields=st.dictionaries(
        st.sampled_from(["delta", "item_id", "audio_start_ms", "transcript", "error"]), JSON
    ),
)
def test_decode_mapped_events_with_any_fields_fail_only_with_remote_protocol_error(
    kind: str, fields: dict[str, object]
) -> None:
    _decode_or_protocol_error(json.dumps({**fields, "type": kind}))


# --- endpoint and provider ----------------------------------------------------------------------


def test_endpoint_ga_adds_model_and_key() -> None:
    endpoint = openai_endpoint(
        "wss://api.openai.com/v1/realtime", KEY, flavour="ga", model="gpt-realtime"
    )
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert endpoint.resource == "/v1/realtime?model=gpt-realtime"
    assert endpoint.headers == (("Authorization", f"Bearer {KEY}"),)
    assert endpoint.flavour == "ga"
    assert endpoint.name == "openai"
    assert KEY not in repr(endpoint) and KEY not in str(endpoint)


def test_endpoint_beta_adds_the_beta_header() -> None:
    endpoint = openai_endpoint(
        "wss://api.openai.com/v1/realtime",
        KEY,
        flavour="beta",
        model="gpt-4o-realtime-preview-2024-12-17",
        name="oai",
    )
    assert endpoint.url.endswith("?model=gpt-4o-realtime-preview-2024-12-17")
    assert dict(endpoint.headers) == {
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Beta": "realtime=v1",
    }
    assert endpoint.flavour == "beta" and endpoint.name == "oai"
    assert KEY not in repr(endpoint)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://h/v1/realtime?model=custom", "wss://h/v1/realtime?model=custom"),
        ("wss://h/v1/realtime?call_id=c1", "wss://h/v1/realtime?call_id=c1&model=gpt-realtime"),
        ("ws://127.0.0.1:9/x?modelx=1", "ws://127.0.0.1:9/x?modelx=1&model=gpt-realtime"),
    ],
)
def test_endpoint_adds_model_only_when_absent(url: str, expected: str) -> None:
    assert openai_endpoint(url, None).url == expected


def test_endpoint_without_key_has_no_authorization() -> None:
    assert openai_endpoint("ws://127.0.0.1:9/v1/realtime", None).headers == ()
    assert openai_endpoint("ws://127.0.0.1:9/v1/realtime", "").headers == ()
    with pytest.raises(ValueError, match="flavour"):
        openai_endpoint("ws://h/", None, flavour="v2")  # type: ignore[arg-type]


async def test_provider_session_pairs_the_endpoint_with_a_fresh_codec() -> None:
    endpoint = openai_endpoint("wss://api.openai.com/v1/realtime", KEY)
    provider = OpenAIProvider(
        endpoint, voice="cedar", instructions="Be kind.", transcription_model="gpt-4o-transcribe"
    )
    assert provider.name == "openai"
    first = await provider.session([])
    second = await provider.session(HISTORY)
    assert isinstance(first, ProviderSession)
    assert first.endpoint == endpoint and second.endpoint == endpoint
    assert first.codec is not second.codec
    assert isinstance(second.codec, OpenAIRealtimeCodec)
    frames = second.codec.opening(HISTORY)
    assert len(frames) == 4
    update = client_event("ga", frames[0])
    assert update.session.audio.output.voice == "cedar"  # type: ignore[attr-defined]
    assert KEY not in repr(provider) and KEY not in repr(first) and KEY not in repr(second.codec)


async def test_provider_flavour_sets_the_beta_header() -> None:
    ga_endpoint = openai_endpoint("wss://h/v1/realtime", KEY)
    beta = OpenAIProvider(ga_endpoint, flavour="beta", name="openai-beta")
    session = await beta.session([])
    assert BETA_HEADER in session.endpoint.headers
    assert session.endpoint.flavour == "beta"
    assert isinstance(session.codec, OpenAIRealtimeCodec) and session.codec.flavour == "beta"
    client_event("beta", session.codec.opening([])[0])
    assert beta.name == "openai-beta"
    # the flavour follows the endpoint when not given, and GA drops a stray beta header
    beta_endpoint = openai_endpoint("wss://h/v1/realtime", KEY, flavour="beta")
    assert OpenAIProvider(beta_endpoint).flavour == "beta"
    ga = OpenAIProvider(beta_endpoint, flavour="ga")
    assert ga.endpoint.headers == (("Authorization", f"Bearer {KEY}"),)
    plain = ProviderEndpoint("echo", "ws://127.0.0.1:1/v1/realtime")
    assert OpenAIProvider(plain).endpoint is plain
    assert OpenAIProvider(plain).name == "echo"
