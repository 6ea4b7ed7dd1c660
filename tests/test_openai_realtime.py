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
import re
from typing import Any

import pytest
from hypothesis import given, settings
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

from voxbridge.audio import b64_decode, b64_encode
from voxbridge.carriers.twilio import TwilioStream, encode_connected, encode_start
from voxbridge.errors import BadAudio, Reason, RemoteProtocolError
from voxbridge.providers.base import ProviderSession
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.providers.events import (
    AgentAudio,
    ProviderError,
    ResponseStarted,
    SpeechStarted,
    Transcript,
    Truncation,
)
from voxbridge.providers.openai_realtime import (
    BETA_HEADER,
    OpenAIProvider,
    OpenAIRealtimeCodec,
    openai_endpoint,
)

CLIENT: dict[str, TypeAdapter[Any]] = {
    "ga": TypeAdapter(GAClientEvent),
    "beta": TypeAdapter(BetaClientEvent),
}
SERVER: dict[str, TypeAdapter[Any]] = {
    "ga": TypeAdapter(GAServerEvent),
    "beta": TypeAdapter(BetaServerEvent),
}
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
    assert model.type == event["type"]  # type: ignore[attr-defined]
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


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def response_created(response_id: str) -> dict[str, Any]:
    return {"type": "response.created", "event_id": "e", "response": {"id": response_id}}


def response_done(response_id: str) -> dict[str, Any]:
    return {
        "type": "response.done",
        "event_id": "e",
        "response": {"id": response_id, "status": "completed"},
    }


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_interrupt_truncates_the_heard_audio(flavour: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    [frame] = codec.interrupt([Truncation("item_abc", 1234)])
    assert json.loads(frame) == truncate("item_abc", 1234)
    client_event(flavour, frame)
    [clamped] = codec.interrupt([Truncation("item_abc", -5)])
    assert json.loads(clamped) == truncate("item_abc", 0)
    client_event(flavour, clamped)
    assert codec.interrupt([]) == []  # no response in progress, nothing heard: nothing to say


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_interrupt_truncates_every_item_in_order(flavour: str) -> None:
    """The item being heard at the heard millisecond, the items queued behind it at 0."""
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    frames = codec.interrupt([Truncation("a", 960), Truncation("b", 0)])
    assert [json.loads(frame) for frame in frames] == [truncate("a", 960), truncate("b", 0)]
    models = [client_event(flavour, frame) for frame in frames]
    assert [(m.item_id, m.audio_end_ms) for m in models] == [("a", 960), ("b", 0)]  # type: ignore[attr-defined]


def in_progress(codec: OpenAIRealtimeCodec) -> str | None:
    """``codec.response_id``, read afresh (mypy would keep an earlier assert's narrowing)."""
    return codec.response_id


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_interrupt_cancels_the_response_in_progress_first(flavour: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    assert codec.interrupt([]) == []  # nothing in progress yet
    started = codec.decode(server_frame(flavour, response_created("resp_1")))
    assert started == ResponseStarted("resp_1")
    assert in_progress(codec) == "resp_1"

    cancel = {"type": "response.cancel", "response_id": "resp_1"}
    [frame] = codec.interrupt([])
    assert json.loads(frame) == cancel
    assert client_event(flavour, frame).response_id == "resp_1"  # type: ignore[attr-defined]
    frames = codec.interrupt([Truncation("a", 960), Truncation("b", -1)])
    assert [json.loads(f) for f in frames] == [cancel, truncate("a", 960), truncate("b", 0)]
    for f in frames:
        client_event(flavour, f)
    assert in_progress(codec) == "resp_1"  # interrupting does not end it: response.done does
    assert codec.interrupt([]) == [frame]

    assert codec.decode(server_frame(flavour, response_done("resp_1"))) is None
    assert in_progress(codec) is None
    assert codec.interrupt([]) == []
    assert [json.loads(f) for f in codec.interrupt([Truncation("a", 5)])] == [truncate("a", 5)]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_new_response_replaces_the_one_to_cancel(flavour: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    codec.decode(server_frame(flavour, response_created("resp_1")))
    assert codec.decode(server_frame(flavour, response_created("resp_2"))) == ResponseStarted(
        "resp_2"
    )
    [frame] = codec.interrupt([])
    assert json.loads(frame) == {"type": "response.cancel", "response_id": "resp_2"}


@pytest.mark.parametrize(
    "created",
    [
        {"type": "response.created"},
        {"type": "response.created", "response": None},
        {"type": "response.created", "response": "resp_1"},
        {"type": "response.created", "response": {}},
        {"type": "response.created", "response": {"id": ""}},
        {"type": "response.created", "response": {"id": 7}},
    ],
)
def test_a_response_without_an_id_is_started_but_not_cancellable(created: dict[str, Any]) -> None:
    codec = OpenAIRealtimeCodec()
    codec.decode(json.dumps(response_created("resp_old")))
    assert codec.decode(json.dumps(created)) == ResponseStarted(None)
    assert codec.response_id is None  # the old id is not cancelled by mistake
    assert codec.interrupt([]) == []


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
        (
            {"type": audio_delta, **IDS, "delta": "//7+/Q=="},
            AgentAudio(b"\xff\xfe\xfe\xfd", "item_1", "resp_1"),
        ),
        ({"type": audio_delta, **IDS, "delta": ""}, None),  # nothing to play
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
        # our barge-in cancel raced the server's own: expected, not an error
        (
            {
                "type": "error",
                "event_id": "e",
                "error": {
                    "type": "invalid_request_error",
                    "code": "response_cancel_not_active",
                    "message": "Cancellation failed: no active response found",
                },
            },
            None,
        ),
        (response_created("resp_1"), ResponseStarted("resp_1")),
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
            ) == AgentAudio(b"\x00", "x")


ALL_CODES = bytes(range(256))


def audio_delta(flavour: str, delta: object) -> dict[str, Any]:
    kind = "response.output_audio.delta" if flavour == "ga" else "response.audio.delta"
    return {"type": kind, **IDS, "delta": delta}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "audio",
    [b"\x00", b"\xff\x7f", b"\x80\x00\x7f", ALL_CODES, ALL_CODES[::-1] * 8],
    ids=["1-byte", "2-bytes", "3-bytes", "every-code", "2048-bytes"],
)
def test_audio_deltas_decode_to_the_exact_bytes(flavour: str, audio: bytes) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    delta = base64.b64encode(audio).decode("ascii")
    event = codec.decode(server_frame(flavour, audio_delta(flavour, delta)))
    assert event == AgentAudio(audio, "item_1", "resp_1")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("delta", "match"),
    [
        ("@@@@", "not valid base64"),  # outside the alphabet
        ("QUJ", "not valid base64"),  # bad padding
        ("QQ=", "not valid base64"),
        ("QQ", "not valid base64"),
        ("QUJD\n", "not valid base64"),  # a newline, as MIME base64 would add
        ("QU JD", "not valid base64"),
        ("QUJD-_==", "not valid base64"),  # the URL-safe alphabet
        ("QQ==QQ==", "not valid base64"),  # data after the padding
        ("=QUJ", "not valid base64"),  # leading padding
        ("====", "not valid base64"),
        ("QUJ\u00e9", "not valid base64"),  # non-ASCII text
        ("\uff31\uff35\uff2a\uff24", "not valid base64"),  # fullwidth "QUJD"
        (5, "must be a base64 string, got int"),
        (1.5, "must be a base64 string, got float"),
        (True, "must be a base64 string, got bool"),
        (None, "must be a base64 string, got null"),
        (["QUJD"], "must be a base64 string, got list"),
        ({"audio": "QUJD"}, "must be a base64 string, got dict"),
    ],
)
def test_bad_audio_deltas_raise_bad_audio(flavour: str, delta: object, match: str) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    codec.decode(server_frame(flavour, response_created("resp_1")))
    frame = json.dumps(audio_delta(flavour, delta))
    with pytest.raises(BadAudio, match=match) as info:
        codec.decode(frame)
    assert isinstance(info.value, RemoteProtocolError)  # a malformed frame, dropped by the call
    assert codec.response_id == "resp_1"  # one bad chunk does not disturb the response


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_missing_delta_is_bad_audio(flavour: str) -> None:
    event = audio_delta(flavour, None)
    del event["delta"]
    with pytest.raises(BadAudio, match="got null"):
        OpenAIRealtimeCodec(flavour).decode(json.dumps(event))  # type: ignore[arg-type]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {
                "type": "invalid_request_error",
                "code": "response_cancel_not_active",
                "message": "Cancellation failed: no active response found",
            },
            None,
        ),
        (
            {
                "type": "invalid_request_error",
                "code": "item_truncate_invalid_item_id",
                "message": "Cancellation failed: no active response found",
            },
            ProviderError(
                "item_truncate_invalid_item_id", "Cancellation failed: no active response found"
            ),
        ),
        (
            {"type": "invalid_request_error", "code": "invalid_value", "message": "bad"},
            ProviderError("invalid_value", "bad"),
        ),
        (
            {"type": "server_error", "message": "response_cancel_not_active"},
            ProviderError("server_error", "response_cancel_not_active"),
        ),
    ],
    ids=["cancel-not-active", "other-code", "invalid-value", "type-only"],
)
def test_only_the_cancel_race_error_is_silent(
    flavour: str, error: dict[str, Any], expected: ProviderError | None
) -> None:
    codec = OpenAIRealtimeCodec(flavour)  # type: ignore[arg-type]
    frame = server_frame(flavour, {"type": "error", "event_id": "e", "error": error})
    assert codec.decode(frame) == expected


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
        '{"type":"response.output_audio.delta","delta":"AA==","item_id":3,"response_id":[]}'
    ) == AgentAudio(b"\x00", None, None)
    assert codec.decode(
        '{"type":"response.output_audio.delta","delta":"AA==","item_id":"","response_id":""}'
    ) == AgentAudio(b"\x00", None, None)


# --- property: any audio delta ------------------------------------------------------------------

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: RFC 4648 section 4, padded: whole quads, the last one possibly ``xx==`` or ``xxx=``.
B64_SHAPE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
#: Text that is often base64, often nearly so: the alphabet, padding, whitespace, URL-safe letters.
B64ISH = st.text(alphabet=B64_ALPHABET + "==\n -_", max_size=24)
DELTAS = st.one_of(
    st.text(),
    B64ISH,
    st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode("ascii")),
)
TWILIO_SID = "MZ" + "0123456789abcdef" * 2


def canonical_b64(text: str) -> bytes | None:
    """The bytes ``text`` spells if it is *the* base64 of them (RFC 4648 section 4: padded, only the
    alphabet, pad bits zero), else ``None``.

    Checked without binascii's ``strict_mode``, whose strictness depends on the CPython version:
    3.11 accepts excess padding (``"QUJD="``) and non-zero pad bits (``"QR=="``); newer versions
    reject them (CPython gh-118314, gh-146311).
    """
    if not B64_SHAPE.fullmatch(text):
        return None
    audio = base64.b64decode(text)
    return audio if base64.b64encode(audio).decode("ascii") == text else None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return dict(pairs)


def check_twilio_media(audio: bytes, sid: str = TWILIO_SID) -> None:
    """``audio`` sent to the caller is exactly Twilio's media frame, carrying exactly ``audio``."""
    stream = TwilioStream()
    stream.receive(encode_connected())
    stream.receive(encode_start(sid, "CA" + "0" * 32, "AC" + "0" * 32))
    frame = json.loads(stream.media(audio), object_pairs_hook=unique_keys)
    payload = base64.b64encode(audio).decode("ascii")  # the one base64 of ``audio``
    assert frame == {"event": "media", "streamSid": sid, "media": {"payload": payload}}
    assert b64_decode(frame["media"]["payload"]) == audio


@pytest.mark.parametrize("kind", ["response.output_audio.delta", "response.audio.delta"])
@settings(max_examples=200)
@given(delta=DELTAS)
def test_any_delta_is_exact_audio_nothing_or_bad_audio(kind: str, delta: str) -> None:
    """Whatever text a delta holds, decode returns exactly the audio it encodes, nothing (empty), or
    raises BadAudio; and that audio always becomes a well-formed Twilio media frame."""
    codec = OpenAIRealtimeCodec()
    frame = json.dumps({"type": kind, "delta": delta, "item_id": "item_1", "response_id": "r"})
    if any("\ud800" <= char <= "\udfff" for char in delta):
        # a lone surrogate is not JSON text at all (no UTF-8 frame can carry it)
        with pytest.raises(RemoteProtocolError, match="malformed JSON"):
            codec.decode(frame)
        return
    expected = canonical_b64(delta)
    try:
        event = codec.decode(frame)
    except BadAudio:
        assert expected is None, f"rejected the base64 of {expected!r}"
        return
    if event is None:
        assert delta == ""
        return
    assert isinstance(event, AgentAudio)
    assert (event.item_id, event.response_id) == ("item_1", "r")
    assert isinstance(event.audio, bytes) and event.audio
    if expected is not None:
        assert event.audio == expected
        assert b64_encode(event.audio) == delta
    else:
        # A spelling this CPython's strict mode lets through (see canonical_b64): it must still be
        # the bytes the text spells, with nothing dropped.
        assert event.audio == base64.b64decode(delta)
        assert len(b64_encode(event.audio).rstrip("=")) == len(delta.rstrip("="))
    check_twilio_media(event.audio)


# --- property: any frame ------------------------------------------------------------------------

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
    "response.created",
    "response.done",
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
        event, AgentAudio | ResponseStarted | SpeechStarted | Transcript | ProviderError
    )
    if isinstance(event, AgentAudio):
        assert isinstance(event.audio, bytes) and event.audio


@given(frame=st.text() | st.binary())
def test_decode_any_frame_fails_only_with_remote_protocol_error(frame: str | bytes) -> None:
    _decode_or_protocol_error(frame)


@given(value=JSON)
def test_decode_any_json_fails_only_with_remote_protocol_error(value: object) -> None:
    _decode_or_protocol_error(json.dumps(value))


@given(
    kind=st.sampled_from(MAPPED),
    fields=st.dictionaries(
        st.sampled_from(
            ["delta", "item_id", "response_id", "response", "audio_start_ms", "transcript", "error"]
        ),
        JSON | B64ISH,
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
