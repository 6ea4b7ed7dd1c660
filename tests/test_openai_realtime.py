"""The OpenAI Realtime (GA) codec and provider, checked against the official ``openai`` package.

Oracle: every client event the codec builds validates against ``RealtimeClientEvent`` as the
variant its ``type`` names, with no field the model does not know (the openai models allow extras,
so a misspelt field would otherwise pass silently) and a lossless round trip. Every server frame
fed to the decoder validates against ``RealtimeServerEvent`` first. The default models are read
against the package too: listed in its model literals, not among its deprecated values.
"""

from __future__ import annotations

import ast
import base64
import inspect
import json
import re
import typing
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from openai.types.realtime import (
    AudioTranscription,
    RealtimeClientEvent,
    RealtimeServerEvent,
    RealtimeSessionCreateRequestParam,
)
from openai.types.realtime.realtime_audio_formats import AudioPCMU
from openai.types.realtime.realtime_audio_input_turn_detection import ServerVad
from openai.types.realtime.realtime_conversation_item_assistant_message import (
    RealtimeConversationItemAssistantMessage,
)
from openai.types.realtime.realtime_conversation_item_function_call import (
    RealtimeConversationItemFunctionCall,
)
from openai.types.realtime.realtime_conversation_item_function_call_output import (
    RealtimeConversationItemFunctionCallOutput,
)
from openai.types.realtime.realtime_conversation_item_user_message import (
    RealtimeConversationItemUserMessage,
)
from openai.types.realtime.realtime_function_tool import RealtimeFunctionTool
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
from openai.types.realtime.response_create_event import ResponseCreateEvent
from pydantic import BaseModel, TypeAdapter

from voxbridge.agents import AgentConfig
from voxbridge.audio import b64_decode, b64_encode
from voxbridge.carriers.twilio import TwilioStream, encode_connected, encode_start
from voxbridge.errors import BadAudio, Reason, RemoteProtocolError
from voxbridge.providers.base import ProviderSession
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.providers.events import (
    AgentAudio,
    ProviderError,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
    dtmf_message,
)
from voxbridge.providers.openai_realtime import (
    GREETING_PROMPT,
    OPENAI_MODEL,
    TRANSCRIPTION_MODEL,
    OpenAIProvider,
    OpenAIRealtimeCodec,
    greeting_instructions,
    openai_endpoint,
)
from voxbridge.providers.registry import provider_for
from voxbridge.settings import Settings
from voxbridge.tools import END_CALL, Tool

CLIENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)
SERVER: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
KEY = "sk-test-0123456789abcdef"
WEATHER = Tool(
    "get_weather",
    "The weather in a city, now.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "the city"}},
        "required": ["city"],
    },
)


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


def client_event(frame: str | bytes) -> Any:
    """``frame`` validated as a GA client event, strictly."""
    assert isinstance(frame, str), "OpenAI Realtime client events are text frames"
    event = json.loads(frame)
    model = CLIENT.validate_python(event)
    assert isinstance(model, BaseModel)
    assert model.type == event["type"]  # type: ignore[attr-defined]
    assert extras(model) == [], f"fields the GA schema does not know: {extras(model)}"
    assert model.model_dump(mode="json", exclude_unset=True) == event
    return model


def server_frame(event: dict[str, Any]) -> str:
    """``event`` as a frame, after checking it is a real GA server event."""
    model = SERVER.validate_python(event)
    assert model.type == event["type"]
    return json.dumps(event)


# --- the default models, against the package ----------------------------------------------------


def literal_values(annotation: Any) -> set[str]:
    """Every ``Literal`` string inside ``annotation`` (through ``Union``/``Optional``)."""
    if typing.get_origin(annotation) is typing.Literal:
        return {value for value in typing.get_args(annotation) if isinstance(value, str)}
    found: set[str] = set()
    for argument in typing.get_args(annotation):
        found |= literal_values(argument)
    return found


def attribute_docstring(cls: type, name: str) -> str:
    """The string literal after ``name``'s annotation in ``cls``'s source (a field docstring)."""
    module = inspect.getmodule(cls)
    assert module is not None
    tree = ast.parse(inspect.getsource(module))
    [node] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    for statement, following in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.target.id == name
        ):
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            assert isinstance(following.value.value, str)
            return following.value.value
    raise AssertionError(f"{cls.__name__}.{name} has no docstring")


def deprecated_values(docstring: str) -> set[str]:
    """The quoted names under a field docstring's "Deprecated values:" heading."""
    if "Deprecated values:" not in docstring:
        return set()
    section = docstring.split("Deprecated values:", 1)[1]
    names = set(re.findall(r'"([^"]+)"', section))
    assert names, f"a 'Deprecated values' section naming nothing: {section!r}"
    return names


@pytest.mark.parametrize(
    ("cls", "annotation", "default"),
    [
        (
            RealtimeSessionCreateRequestParam,
            typing.get_type_hints(RealtimeSessionCreateRequestParam)["model"],
            OPENAI_MODEL,
        ),
        (
            AudioTranscription,
            AudioTranscription.model_fields["model"].annotation,
            TRANSCRIPTION_MODEL,
        ),
    ],
    ids=["realtime-model", "transcription-model"],
)
def test_default_models_are_current_in_the_openai_package(
    cls: type, annotation: Any, default: str
) -> None:
    known = literal_values(annotation)
    deprecated = deprecated_values(attribute_docstring(cls, "model"))
    assert default in known, f"{default!r} is not a model the openai package knows: {known}"
    assert deprecated <= known, deprecated - known  # the names were parsed whole
    assert default not in deprecated, f"{default!r} is deprecated: {deprecated}"


def test_the_previous_defaults_are_deprecated() -> None:
    """The check above can fail: the models voxbridge used before are on the deprecated lists."""
    realtime = attribute_docstring(RealtimeSessionCreateRequestParam, "model")
    transcription = attribute_docstring(AudioTranscription, "model")
    assert "gpt-realtime" in deprecated_values(realtime)
    assert "whisper-1" in deprecated_values(transcription)


def test_codec_provider_and_endpoint_default_to_the_current_models() -> None:
    codec = OpenAIRealtimeCodec()
    assert (codec.model, codec.transcription_model) == (OPENAI_MODEL, TRANSCRIPTION_MODEL)
    provider = OpenAIProvider(openai_endpoint("wss://h/v1/realtime", None))
    assert (provider.model, provider.transcription_model) == (OPENAI_MODEL, TRANSCRIPTION_MODEL)
    assert provider.endpoint.url == f"wss://h/v1/realtime?model={OPENAI_MODEL}"
    session = json.loads(codec.session_update())["session"]
    assert session["model"] == OPENAI_MODEL == "gpt-realtime-2.1"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-transcribe"}


# --- session.update -----------------------------------------------------------------------------


def test_session_update_is_the_documented_shape() -> None:
    codec = OpenAIRealtimeCodec(
        model="gpt-realtime-2",
        voice="marin",
        instructions="Be brief.",
        transcription_model="gpt-live-transcribe",
    )
    [frame] = codec.opening([], first=True)
    assert json.loads(frame) == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime-2",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad"},
                    "transcription": {"model": "gpt-live-transcribe"},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
            "instructions": "Be brief.",
        },
    }
    model = client_event(frame)
    session = model.session
    assert isinstance(session, RealtimeSessionCreateRequest)
    assert session.audio is not None and session.audio.input is not None
    assert session.audio.output is not None
    # the discriminated unions picked the variants we meant, not a lookalike
    assert isinstance(session.audio.input.format, AudioPCMU)
    assert isinstance(session.audio.output.format, AudioPCMU)
    assert isinstance(session.audio.input.turn_detection, ServerVad)
    assert session.audio.input.transcription is not None
    assert session.audio.input.transcription.model == "gpt-live-transcribe"
    assert session.tools is None and session.tool_choice is None


def test_session_update_declares_the_tools() -> None:
    codec = OpenAIRealtimeCodec(tools=[WEATHER, END_CALL])
    [frame] = codec.opening([], first=True)
    session = json.loads(frame)["session"]
    assert session["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city, now.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city"}},
                "required": ["city"],
            },
        },
        {
            "type": "function",
            "name": "end_call",
            "description": END_CALL.description,
            "parameters": dict(END_CALL.parameters),
        },
    ]
    assert session["tool_choice"] == "auto"
    assert list(session)[-2:] == ["tools", "tool_choice"]
    validated = client_event(frame).session
    assert [type(tool) for tool in validated.tools] == [RealtimeFunctionTool] * 2
    assert validated.tools[0].parameters == dict(WEATHER.parameters)
    assert validated.tool_choice == "auto"


def test_tool_parameters_of_any_mapping_and_sequence_types_are_sent_as_json() -> None:
    from types import MappingProxyType

    schema = MappingProxyType(
        {
            "type": "object",
            "properties": MappingProxyType({"n": {"type": "integer", "enum": (1, 2)}}),
            "required": ("n",),
        }
    )
    codec = OpenAIRealtimeCodec(tools=[Tool("pick", "Pick one.", schema)])
    tool = json.loads(codec.session_update())["session"]["tools"][0]
    assert tool["parameters"] == {
        "type": "object",
        "properties": {"n": {"type": "integer", "enum": [1, 2]}},
        "required": ["n"],
    }
    client_event(codec.session_update())


def test_session_update_overrides() -> None:
    codec = OpenAIRealtimeCodec(voice="alloy", instructions="a")
    frame = codec.session_update(voice="cedar", instructions="b", model="gpt-realtime-2")
    session = client_event(frame).session
    assert (session.audio.output.voice, session.instructions, session.model) == (
        "cedar",
        "b",
        "gpt-realtime-2",
    )
    assert "alloy" not in frame


@given(instructions=st.text(), voice=st.text(min_size=1))
def test_session_update_escapes_any_text(instructions: str, voice: str) -> None:
    codec = OpenAIRealtimeCodec(voice=voice, instructions=instructions)
    frame = codec.session_update()
    frame.encode("utf-8")  # sendable as a text frame, even with lone surrogates
    assert client_event(frame).session.instructions == instructions


# --- history ------------------------------------------------------------------------------------

EXCHANGE = ToolExchange("call_7", "get_weather", '{"city":"Oslo"}', '{"celsius":-3}')
HISTORY = [
    Transcript("caller", "Hello, is this the bakery?"),
    Transcript("agent", 'Yes! We have "fresh" bread.'),
    Transcript("caller", ""),  # an empty line adds nothing: skipped
    Transcript("dtmf", "12#"),
    EXCHANGE,
    Transcript("agent", "Anything else? ✓"),
]


def item_create(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": item}


def message(role: str, part: str, text: str) -> dict[str, Any]:
    return item_create({"type": "message", "role": role, "content": [{"type": part, "text": text}]})


FUNCTION_CALL = item_create(
    {
        "type": "function_call",
        "call_id": "call_7",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }
)
FUNCTION_CALL_OUTPUT = item_create(
    {"type": "function_call_output", "call_id": "call_7", "output": '{"celsius":-3}'}
)
RESPONSE_CREATE = {"type": "response.create"}


def test_opening_replays_history_as_items() -> None:
    codec = OpenAIRealtimeCodec(greeting="Hello!")  # a resumed session never greets again
    frames = codec.opening(HISTORY, first=False)
    assert json.loads(frames[0])["type"] == "session.update"
    assert [json.loads(frame) for frame in frames[1:]] == [
        message("user", "input_text", "Hello, is this the bakery?"),
        message("assistant", "output_text", 'Yes! We have "fresh" bread.'),
        message("user", "input_text", "The caller pressed 1 2 # on the keypad."),
        FUNCTION_CALL,
        FUNCTION_CALL_OUTPUT,
        message("assistant", "output_text", "Anything else? ✓"),
    ]
    models = [client_event(frame) for frame in frames]
    items = [type(model.item) for model in models[1:]]
    assert items == [
        RealtimeConversationItemUserMessage,
        RealtimeConversationItemAssistantMessage,
        RealtimeConversationItemUserMessage,
        RealtimeConversationItemFunctionCall,
        RealtimeConversationItemFunctionCallOutput,
        RealtimeConversationItemAssistantMessage,
    ]


def test_history_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError, match="role"):
        OpenAIRealtimeCodec().opening([Transcript("system", "x")], first=False)


HISTORY_ITEMS = st.one_of(
    st.builds(Transcript, st.sampled_from(["caller", "agent"]), st.text()),
    st.builds(Transcript, st.just("dtmf"), st.text(alphabet="0123456789*#ABCD")),
    st.builds(ToolExchange, st.text(min_size=1), st.text(min_size=1), st.text(), st.text()),
)


@given(history=st.lists(HISTORY_ITEMS, max_size=5))
def test_any_history_validates(history: list[Transcript | ToolExchange]) -> None:
    frames = OpenAIRealtimeCodec(greeting="Hi").opening(history, first=not history)
    expected = sum(
        2 if isinstance(item, ToolExchange) else 1 if item.text else 0 for item in history
    )
    last = history[-1] if history else None
    owed = isinstance(last, ToolExchange) or (
        isinstance(last, Transcript) and last.role == "dtmf" and bool(last.text)
    )
    # the greeting at call start; a response.create when the replay ends with what it owes
    assert len(frames) == 1 + expected + (0 if history else 1) + owed
    for frame in frames:
        client_event(frame)


# --- the greeting -------------------------------------------------------------------------------


def test_greeting_at_call_start_is_a_response_create_after_the_session_update() -> None:
    codec = OpenAIRealtimeCodec(greeting='Thanks for calling "Acme"!')
    update, greet = codec.opening([], first=True)
    assert json.loads(update)["type"] == "session.update"
    instructions = GREETING_PROMPT + 'Thanks for calling "Acme"!'
    assert json.loads(greet) == {
        "type": "response.create",
        "response": {"instructions": instructions},
    }
    assert greeting_instructions('Thanks for calling "Acme"!') == instructions
    assert instructions.startswith("Start the call: greet the caller by saying exactly")
    model = client_event(greet)
    assert isinstance(model, ResponseCreateEvent)
    assert model.response is not None and model.response.instructions == instructions


@pytest.mark.parametrize("greeting", [None, ""])
def test_no_greeting_means_the_caller_speaks_first(greeting: str | None) -> None:
    assert len(OpenAIRealtimeCodec(greeting=greeting).opening([], first=True)) == 1


@pytest.mark.parametrize("history", [[], [Transcript("caller", "")]])
def test_a_resumed_session_is_not_greeted(history: list[Transcript]) -> None:
    # nothing to replay (a session dropped before any line was final) is still a resume
    frames = OpenAIRealtimeCodec(greeting="Hi").opening(history, first=False)
    assert [json.loads(frame)["type"] for frame in frames] == ["session.update"]


def test_the_first_session_is_greeted_after_key_presses_too() -> None:
    frames = OpenAIRealtimeCodec(greeting="Hi").opening([Transcript("dtmf", "1")], first=True)
    assert [json.loads(frame)["type"] for frame in frames] == [
        "session.update",
        "conversation.item.create",
        "response.create",
    ]
    assert "instructions" in json.loads(frames[-1])["response"]  # the greeting's


# --- tool results and key presses ---------------------------------------------------------------


def test_tool_result_to_the_session_that_asked() -> None:
    frames = OpenAIRealtimeCodec().tool_result(EXCHANGE, known=True)
    assert [json.loads(frame) for frame in frames] == [FUNCTION_CALL_OUTPUT, RESPONSE_CREATE]
    output, create = (client_event(frame) for frame in frames)
    assert isinstance(output.item, RealtimeConversationItemFunctionCallOutput)
    assert isinstance(create, ResponseCreateEvent) and create.response is None


def test_tool_result_to_a_resumed_session_replays_the_call_first() -> None:
    frames = OpenAIRealtimeCodec().tool_result(EXCHANGE, known=False)
    assert [json.loads(frame) for frame in frames] == [
        FUNCTION_CALL,
        FUNCTION_CALL_OUTPUT,
        RESPONSE_CREATE,
    ]
    call = client_event(frames[0])
    assert isinstance(call.item, RealtimeConversationItemFunctionCall)
    for frame in frames[1:]:
        client_event(frame)


@given(exchange=st.builds(ToolExchange, st.text(), st.text(), st.text(), st.text()))
def test_any_tool_result_validates(exchange: ToolExchange) -> None:
    codec = OpenAIRealtimeCodec()
    for known in (True, False):
        frames = codec.tool_result(exchange, known=known)
        models = [client_event(frame) for frame in frames]
        assert models[-2].item.output == exchange.output


@pytest.mark.parametrize("digits", ["1", "12#", "*0ABCD"])
def test_dtmf_is_a_user_message_and_a_response_create(digits: str) -> None:
    frames = OpenAIRealtimeCodec().dtmf(digits)
    assert [json.loads(frame) for frame in frames] == [
        message("user", "input_text", dtmf_message(digits)),
        RESPONSE_CREATE,
    ]
    said, create = (client_event(frame) for frame in frames)
    assert isinstance(said.item, RealtimeConversationItemUserMessage)
    assert said.item.content[0].text == dtmf_message(digits)
    assert isinstance(create, ResponseCreateEvent)


# --- audio, barge-in, the end -------------------------------------------------------------------


@given(payload=st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()))
def test_audio_is_an_append(payload: str) -> None:
    codec = OpenAIRealtimeCodec()
    frame = codec.audio(payload)
    assert json.loads(frame) == {"type": "input_audio_buffer.append", "audio": payload}
    assert client_event(frame).audio == payload
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


def response_done(response_id: str, status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {
        "type": "response.done",
        "event_id": "e",
        "response": {"id": response_id, "status": status, **fields},
    }


def test_interrupt_truncates_the_heard_audio() -> None:
    codec = OpenAIRealtimeCodec()
    [frame] = codec.interrupt([Truncation("item_abc", 1234)])
    assert json.loads(frame) == truncate("item_abc", 1234)
    client_event(frame)
    [clamped] = codec.interrupt([Truncation("item_abc", -5)])
    assert json.loads(clamped) == truncate("item_abc", 0)
    client_event(clamped)
    assert codec.interrupt([]) == []  # no response in progress, nothing heard: nothing to say


def test_interrupt_truncates_every_item_in_order() -> None:
    """The item being heard at the heard millisecond, the items queued behind it at 0."""
    codec = OpenAIRealtimeCodec()
    frames = codec.interrupt([Truncation("a", 960), Truncation("b", 0)])
    assert [json.loads(frame) for frame in frames] == [truncate("a", 960), truncate("b", 0)]
    models = [client_event(frame) for frame in frames]
    assert [(m.item_id, m.audio_end_ms) for m in models] == [("a", 960), ("b", 0)]


def in_progress(codec: OpenAIRealtimeCodec) -> str | None:
    """``codec.response_id``, read afresh (mypy would keep an earlier assert's narrowing)."""
    return codec.response_id


def test_interrupt_cancels_the_response_in_progress_first() -> None:
    codec = OpenAIRealtimeCodec()
    assert codec.interrupt([]) == []  # nothing in progress yet
    started = codec.decode(server_frame(response_created("resp_1")))
    assert started == ResponseStarted("resp_1")
    assert in_progress(codec) == "resp_1"

    cancel = {"type": "response.cancel", "response_id": "resp_1"}
    [frame] = codec.interrupt([])
    assert json.loads(frame) == cancel
    assert client_event(frame).response_id == "resp_1"
    frames = codec.interrupt([Truncation("a", 960), Truncation("b", -1)])
    assert [json.loads(f) for f in frames] == [cancel, truncate("a", 960), truncate("b", 0)]
    for f in frames:
        client_event(f)
    assert in_progress(codec) == "resp_1"  # interrupting does not end it: response.done does
    assert codec.interrupt([]) == [frame]

    assert codec.decode(server_frame(response_done("resp_1"))) == ResponseDone("resp_1")
    assert in_progress(codec) is None
    assert codec.interrupt([]) == []
    assert [json.loads(f) for f in codec.interrupt([Truncation("a", 5)])] == [truncate("a", 5)]


def test_a_new_response_replaces_the_one_to_cancel() -> None:
    codec = OpenAIRealtimeCodec()
    codec.decode(server_frame(response_created("resp_1")))
    assert codec.decode(server_frame(response_created("resp_2"))) == ResponseStarted("resp_2")
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


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 4000])
def test_every_close_but_a_refusal_is_a_resumable_drop(code: int) -> None:
    codec = OpenAIRealtimeCodec()
    assert codec.close_reason(code) is Reason.UPSTREAM_CLOSED
    assert codec.closing() == []


def test_a_policy_close_is_a_refusal() -> None:
    # 1008 (RFC 6455 7.4.1, policy violation) is how a key or an account is refused mid-session.
    assert OpenAIRealtimeCodec().close_reason(1008) is Reason.UPSTREAM_REJECTED


# --- decode -------------------------------------------------------------------------------------

IDS = {
    "event_id": "event_1",
    "response_id": "resp_1",
    "item_id": "item_1",
    "output_index": 0,
    "content_index": 0,
}

DECODE_CASES: list[tuple[dict[str, Any], object]] = [
    (
        {"type": "response.output_audio.delta", **IDS, "delta": "//7+/Q=="},
        AgentAudio(b"\xff\xfe\xfe\xfd", "item_1", "resp_1"),
    ),
    ({"type": "response.output_audio.delta", **IDS, "delta": ""}, None),  # nothing to play
    (
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "e",
            "item_id": "i",
            "audio_start_ms": 740,
        },
        SpeechStarted(740),
    ),
    (
        {"type": "response.output_audio_transcript.done", **IDS, "transcript": "Sure."},
        Transcript("agent", "Sure."),
    ),
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
        ProviderError("session_expired", "Your session hit the maximum duration of 60 minutes."),
    ),
    (
        {"type": "error", "event_id": "e", "error": {"type": "server_error", "message": "boom"}},
        ProviderError("server_error", "boom"),
    ),
    (response_created("resp_1"), ResponseStarted("resp_1")),
    (response_done("resp_1", "cancelled"), ResponseDone("resp_1", "cancelled")),
    # events the bridge does not act on
    ({"type": "response.output_audio.done", **IDS}, None),
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
            "rate_limits": [{"name": "requests", "limit": 1, "remaining": 1, "reset_seconds": 1.0}],
        },
        None,
    ),
    (
        {
            "type": "response.function_call_arguments.delta",
            "event_id": "e",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "call_id": "c",
            "delta": "{",
        },
        None,
    ),
    (
        {
            "type": "response.function_call_arguments.done",
            "event_id": "e",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "call_id": "c",
            "name": "get_weather",
            "arguments": "{}",
        },
        None,
    ),
    # the beta interface's names are not GA events: ignored like any unknown event
    ({"type": "response.audio.delta", **IDS, "delta": "AA=="}, None),
    ({"type": "response.audio_transcript.done", **IDS, "transcript": "x"}, None),
]


@pytest.mark.parametrize(
    ("event", "expected"),
    DECODE_CASES,
    ids=[f"{e['type']}-{i}" for i, (e, _) in enumerate(DECODE_CASES)],
)
def test_decode_maps_the_server_events(event: dict[str, Any], expected: object) -> None:
    frame = json.dumps(event) if event["type"].startswith("response.audio") else server_frame(event)
    assert OpenAIRealtimeCodec().decode(frame) == expected


def test_decode_maps_lifecycle_events_to_nothing() -> None:
    codec = OpenAIRealtimeCodec()
    item = {"id": "item_1", "type": "message", "role": "assistant", "content": []}
    for event in [
        {"type": "session.created", "event_id": "e", "session": {"type": "realtime"}},
        {"type": "conversation.item.added", "event_id": "e", "item": item},
        {"type": "conversation.item.done", "event_id": "e", "item": item},
    ]:
        assert codec.decode(server_frame(event)) is None


# --- response.done: tool calls and usage --------------------------------------------------------


def function_call_item(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": f"item_{call_id}",
        "object": "realtime.item",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


SPOKEN_ITEM = {
    "id": "item_msg",
    "object": "realtime.item",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_audio", "transcript": "Let me check."}],
}
USAGE = {
    "total_tokens": 427,
    "input_tokens": 300,
    "output_tokens": 127,
    "input_token_details": {
        "text_tokens": 120,
        "audio_tokens": 180,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 27, "audio_tokens": 100},
}
USAGE_COUNTS = Usage(
    (
        ("input_text_tokens", 120),
        ("input_audio_tokens", 180),
        ("input_cached_tokens", 64),
        ("output_text_tokens", 27),
        ("output_audio_tokens", 100),
    )
)


def test_response_done_carries_the_tool_calls_and_the_usage() -> None:
    codec = OpenAIRealtimeCodec()
    codec.decode(server_frame(response_created("resp_9")))
    output = [
        SPOKEN_ITEM,
        function_call_item("call_1", "get_weather", '{"city":"Oslo"}'),
        function_call_item("call_2", "end_call", ""),
    ]
    event = codec.decode(server_frame(response_done("resp_9", output=output, usage=USAGE)))
    assert event == ResponseDone(
        "resp_9",
        "completed",
        (
            ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),
            ToolCall("call_2", "end_call", ""),
        ),
        USAGE_COUNTS,
    )
    assert in_progress(codec) is None


@pytest.mark.parametrize("status", ["cancelled", "incomplete", "failed"])
def test_a_response_that_did_not_complete_asks_for_no_tool_calls(status: str) -> None:
    output = [function_call_item("call_1", "get_weather", "{}")]
    frame = server_frame(response_done("resp_1", status, output=output, usage=USAGE))
    assert OpenAIRealtimeCodec().decode(frame) == ResponseDone("resp_1", status, (), USAGE_COUNTS)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        ({}, None),
        ({"total_tokens": 0, "input_tokens": 0, "output_tokens": 0}, None),
        (
            {
                "input_token_details": {"text_tokens": 0, "audio_tokens": 5, "cached_tokens": 0},
                "output_token_details": {"audio_tokens": 7},
            },
            Usage((("input_audio_tokens", 5), ("output_audio_tokens", 7))),
        ),
        (
            {"input_tokens": 9, "input_token_details": {"text_tokens": 9}},
            Usage((("input_text_tokens", 9),)),
        ),
    ],
    ids=["null", "empty", "totals-only", "some-zero", "text-only"],
)
def test_usage_counts_only_what_was_used(usage: Any, expected: Usage | None) -> None:
    frame = server_frame(response_done("r", usage=usage))
    assert OpenAIRealtimeCodec().decode(frame) == ResponseDone("r", "completed", (), expected)


# Malformed response.done: the envelope raises, the parts that cannot be used are skipped.
@pytest.mark.parametrize(
    "response",
    [
        None,
        "resp_1",
        [],
        {"id": "r"},  # no status
        {"id": "r", "status": 3},
        {"id": "r", "status": ""},
        {"id": "r", "status": "completed", "output": {"type": "function_call"}},
        {"id": "r", "status": "completed", "output": "x"},
    ],
)
def test_a_malformed_response_done_envelope_is_a_protocol_error(response: Any) -> None:
    codec = OpenAIRealtimeCodec()
    codec.decode(json.dumps(response_created("resp_1")))
    with pytest.raises(RemoteProtocolError, match=r"response\.done"):
        codec.decode(json.dumps({"type": "response.done", "response": response}))
    assert codec.response_id is None  # the response is over all the same
    with pytest.raises(RemoteProtocolError):
        codec.decode('{"type": "response.done"}')


@pytest.mark.parametrize(
    ("output", "calls"),
    [
        ([], ()),
        ([None, 3, "x", [], {"type": "message"}], ()),  # not function calls: skipped
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], ()),  # no call_id
        ([{"type": "function_call", "call_id": "c", "arguments": "{}"}], ()),  # no name
        ([{"type": "function_call", "call_id": 5, "name": "f"}], ()),
        ([{"type": "function_call", "call_id": "", "name": "f"}], ()),
        ([{"type": "function_call", "call_id": "c", "name": ["f"]}], ()),
        ([{"type": "function_call", "call_id": "c", "name": "f"}], (ToolCall("c", "f", "{}"),)),
        (
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": None}],
            (ToolCall("c", "f", "{}"),),
        ),
        (  # an object where JSON text belongs: passed on as its JSON text
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": [1]}}],
            (ToolCall("c", "f", '{"a":[1]}'),),
        ),
        (  # not an object at all: the call's argument check will tell the model
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 5}],
            (ToolCall("c", "f", "5"),),
        ),
        (
            [
                {"type": "function_call", "call_id": 1, "name": "f"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "x"},
            ],
            (ToolCall("c2", "g", "x"),),
        ),
    ],
)
def test_unusable_output_items_are_skipped(output: list[Any], calls: tuple[ToolCall, ...]) -> None:
    frame = json.dumps(response_done("r", output=output))
    assert OpenAIRealtimeCodec().decode(frame) == ResponseDone("r", "completed", calls)


@pytest.mark.parametrize(
    "usage",
    [
        "lots",
        [1, 2],
        {"input_token_details": "x", "output_token_details": [1]},
        {"input_token_details": {"text_tokens": "5", "audio_tokens": 1.5, "cached_tokens": True}},
        {"output_token_details": {"text_tokens": -3, "audio_tokens": None}},
    ],
)
def test_unusable_usage_is_left_out(usage: Any) -> None:
    frame = json.dumps(response_done("r", usage=usage))
    assert OpenAIRealtimeCodec().decode(frame) == ResponseDone("r", "completed", (), None)


def test_a_null_output_and_an_odd_id_are_tolerated() -> None:
    frame = json.dumps(
        {"type": "response.done", "response": {"id": 5, "status": "completed", "output": None}}
    )
    assert OpenAIRealtimeCodec().decode(frame) == ResponseDone(None, "completed")


# --- errors -------------------------------------------------------------------------------------


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
                "code": "conversation_already_has_active_response",
                "message": "Conversation already has an active response in progress: resp_1.",
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
    ids=["cancel-not-active", "already-active", "other-code", "invalid-value", "type-only"],
)
def test_only_the_expected_race_errors_are_silent(
    error: dict[str, Any], expected: ProviderError | None
) -> None:
    frame = server_frame({"type": "error", "event_id": "e", "error": error})
    assert OpenAIRealtimeCodec().decode(frame) == expected


# --- audio deltas -------------------------------------------------------------------------------

ALL_CODES = bytes(range(256))


def audio_delta(delta: object) -> dict[str, Any]:
    return {"type": "response.output_audio.delta", **IDS, "delta": delta}


@pytest.mark.parametrize(
    "audio",
    [b"\x00", b"\xff\x7f", b"\x80\x00\x7f", ALL_CODES, ALL_CODES[::-1] * 8],
    ids=["1-byte", "2-bytes", "3-bytes", "every-code", "2048-bytes"],
)
def test_audio_deltas_decode_to_the_exact_bytes(audio: bytes) -> None:
    delta = base64.b64encode(audio).decode("ascii")
    event = OpenAIRealtimeCodec().decode(server_frame(audio_delta(delta)))
    assert event == AgentAudio(audio, "item_1", "resp_1")


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
def test_bad_audio_deltas_raise_bad_audio(delta: object, match: str) -> None:
    codec = OpenAIRealtimeCodec()
    codec.decode(server_frame(response_created("resp_1")))
    with pytest.raises(BadAudio, match=match) as info:
        codec.decode(json.dumps(audio_delta(delta)))
    assert isinstance(info.value, RemoteProtocolError)  # a malformed frame, dropped by the call
    assert codec.response_id == "resp_1"  # one bad chunk does not disturb the response


def test_a_missing_delta_is_bad_audio() -> None:
    event = audio_delta(None)
    del event["delta"]
    with pytest.raises(BadAudio, match="got null"):
        OpenAIRealtimeCodec().decode(json.dumps(event))


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
        '{"type": "response.output_audio.delta"}',
        '{"type": "response.done", "response": 1}',
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


@settings(max_examples=200)
@given(delta=DELTAS)
def test_any_delta_is_exact_audio_nothing_or_bad_audio(delta: str) -> None:
    """Whatever text a delta holds, decode returns exactly the audio it encodes, nothing (empty), or
    raises BadAudio; and that audio always becomes a well-formed Twilio media frame."""
    codec = OpenAIRealtimeCodec()
    event = {"type": "response.output_audio.delta", "delta": delta, "item_id": "item_1"}
    frame = json.dumps({**event, "response_id": "r"})
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
    "response.created",
    "response.done",
    "input_audio_buffer.speech_started",
    "response.output_audio_transcript.done",
    "conversation.item.input_audio_transcription.completed",
    "error",
]


def _decode_or_protocol_error(frame: str | bytes) -> None:
    try:
        event = OpenAIRealtimeCodec().decode(frame)
    except RemoteProtocolError:
        return
    assert event is None or isinstance(
        event,
        AgentAudio | ResponseStarted | ResponseDone | SpeechStarted | Transcript | ProviderError,
    )
    if isinstance(event, AgentAudio):
        assert isinstance(event.audio, bytes) and event.audio
    if isinstance(event, ResponseDone):
        assert all(isinstance(call, ToolCall) for call in event.tool_calls)
        assert all(
            isinstance(c.call_id, str)
            and c.call_id
            and isinstance(c.name, str)
            and c.name
            and isinstance(c.arguments, str)
            for c in event.tool_calls
        )
        assert event.usage is None or all(
            type(amount) is int and amount > 0 for _, amount in event.usage.counts
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


TOKEN_DETAILS = st.dictionaries(
    st.sampled_from(["text_tokens", "audio_tokens", "cached_tokens"]),
    st.integers(-5, 10**9) | JSON,
    max_size=3,
)
FUNCTION_CALLISH = st.fixed_dictionaries(
    {"type": st.just("function_call")},
    optional={
        "call_id": st.text(max_size=4) | JSON,
        "name": st.text(max_size=4) | JSON,
        "arguments": JSON,
    },
)


@given(
    response=st.fixed_dictionaries(
        {},
        optional={
            "id": JSON,
            "status": st.sampled_from(["completed", "cancelled", "failed"]) | JSON,
            "output": st.lists(FUNCTION_CALLISH | JSON, max_size=4) | JSON,
            "usage": st.fixed_dictionaries(
                {},
                optional={
                    "input_token_details": TOKEN_DETAILS,
                    "output_token_details": TOKEN_DETAILS,
                },
            )
            | JSON,
        },
    )
)
def test_decode_any_response_done_fails_only_with_remote_protocol_error(
    response: dict[str, object],
) -> None:
    try:  # JSON text as a peer sends it: no Infinity (that is a malformed frame, tested above)
        frame = json.dumps({"type": "response.done", "response": response}, allow_nan=False)
    except ValueError:
        assume(False)
    _decode_or_protocol_error(frame)
    codec = OpenAIRealtimeCodec()
    codec.decode(json.dumps(response_created("resp_1")))
    try:
        event = codec.decode(frame)
    except RemoteProtocolError:
        event = None
    assert codec.response_id is None  # whatever it held, the response is over
    if isinstance(event, ResponseDone) and event.status != "completed":
        assert event.tool_calls == ()


# --- endpoint and provider ----------------------------------------------------------------------


def test_endpoint_adds_model_and_key() -> None:
    endpoint = openai_endpoint("wss://api.openai.com/v1/realtime", KEY, model="gpt-realtime-2")
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2"
    assert endpoint.resource == "/v1/realtime?model=gpt-realtime-2"
    assert endpoint.headers == (("Authorization", f"Bearer {KEY}"),)  # no OpenAI-Beta header
    assert endpoint.name == "openai"
    assert KEY not in repr(endpoint) and KEY not in str(endpoint)
    assert openai_endpoint("wss://h/v1/realtime", KEY, name="oai").name == "oai"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://h/v1/realtime?model=custom", "wss://h/v1/realtime?model=custom"),
        (
            "wss://h/v1/realtime?call_id=c1",
            f"wss://h/v1/realtime?call_id=c1&model={OPENAI_MODEL}",
        ),
        ("ws://127.0.0.1:9/x?modelx=1", f"ws://127.0.0.1:9/x?modelx=1&model={OPENAI_MODEL}"),
    ],
)
def test_endpoint_adds_model_only_when_absent(url: str, expected: str) -> None:
    assert openai_endpoint(url, None).url == expected


def test_endpoint_without_key_has_no_authorization() -> None:
    assert openai_endpoint("ws://127.0.0.1:9/v1/realtime", None).headers == ()
    assert openai_endpoint("ws://127.0.0.1:9/v1/realtime", "").headers == ()


async def test_provider_session_pairs_the_endpoint_with_a_fresh_codec() -> None:
    endpoint = openai_endpoint("wss://api.openai.com/v1/realtime", KEY)
    provider = OpenAIProvider(
        endpoint,
        voice="cedar",
        instructions="Be kind.",
        transcription_model="gpt-live-transcribe",
        tools=[WEATHER],
        greeting="Hello.",
    )
    assert provider.name == "openai"
    first = await provider.session([], first=True)
    second = await provider.session(HISTORY, first=False)
    assert isinstance(first, ProviderSession)
    assert first.endpoint == endpoint and second.endpoint == endpoint
    assert first.codec is not second.codec
    assert isinstance(first.codec, OpenAIRealtimeCodec)
    update, greet = first.codec.opening([], first=True)
    session = client_event(update).session
    assert session.audio.output.voice == "cedar"
    assert session.audio.input.transcription.model == "gpt-live-transcribe"
    assert [tool.name for tool in session.tools] == ["get_weather"]
    assert client_event(greet).response.instructions == greeting_instructions("Hello.")
    assert len(second.codec.opening(HISTORY, first=False)) == 7
    assert KEY not in repr(provider) and KEY not in repr(first) and KEY not in repr(second.codec)


class QuietCodec(OpenAIRealtimeCodec):
    pass


class QuietProvider(OpenAIProvider):
    def codec(self) -> OpenAIRealtimeCodec:
        return QuietCodec(tools=self.tools)


async def test_for_agent_overrides_what_the_agent_sets() -> None:
    endpoint = openai_endpoint("wss://h/v1/realtime?call_id=c1", KEY, model="gpt-realtime-2")
    base = QuietProvider(
        endpoint,
        model="gpt-realtime-2",
        voice="alloy",
        instructions="base",
        greeting="Hi.",
        tools=[END_CALL],
        name="oai",
    )
    agent = AgentConfig(
        name="sales",
        model="gpt-realtime-2.1-mini",
        voice="marin",
        instructions="Sell bread.",
        greeting="Welcome to the bakery.",
    )
    provider = base.for_agent(agent, [WEATHER])
    assert provider is not base and type(provider) is QuietProvider
    assert (provider.model, provider.voice, provider.instructions, provider.greeting) == (
        "gpt-realtime-2.1-mini",
        "marin",
        "Sell bread.",
        "Welcome to the bakery.",
    )
    assert provider.tools == (WEATHER,) and provider.name == "oai"
    assert provider.endpoint.url == "wss://h/v1/realtime?call_id=c1&model=gpt-realtime-2.1-mini"
    assert provider.endpoint.headers == endpoint.headers
    assert isinstance(
        (await provider.session([], first=True)).codec, QuietCodec
    )  # the subclass's codec
    # the original is untouched
    assert (base.model, base.voice, base.greeting, base.tools) == (
        "gpt-realtime-2",
        "alloy",
        "Hi.",
        (END_CALL,),
    )
    assert base.endpoint is endpoint


def test_for_agent_keeps_what_the_agent_leaves_unset() -> None:
    endpoint = ProviderEndpoint("echo", "ws://127.0.0.1:1/v1/realtime")
    base = OpenAIProvider(endpoint, voice="cedar", instructions="base", greeting="Hi.")
    provider = base.for_agent(AgentConfig(), [])
    assert (provider.model, provider.voice, provider.instructions, provider.greeting) == (
        OPENAI_MODEL,
        "cedar",
        "base",
        "Hi.",
    )
    assert provider.tools == () and provider.endpoint is endpoint
    silent = base.for_agent(AgentConfig(greeting="", model="gpt-realtime-2"), [END_CALL])
    assert silent.greeting == "" and silent.codec().opening([], first=True) == [
        silent.codec().session_update()
    ]
    assert silent.endpoint is endpoint  # an endpoint without a model parameter is kept
    assert json.loads(silent.codec().session_update())["session"]["model"] == "gpt-realtime-2"
    assert [tool.name for tool in silent.codec().tools] == ["end_call"]


def test_from_settings_and_the_registry_speak_ga_with_the_current_models() -> None:
    settings = Settings(voice="marin", instructions="Hi").for_provider("openai", api_key=KEY)
    provider = provider_for(settings)
    assert isinstance(provider, OpenAIProvider)
    assert provider.endpoint.url == f"wss://api.openai.com/v1/realtime?model={OPENAI_MODEL}"
    assert provider.endpoint.headers == (("Authorization", f"Bearer {KEY}"),)
    assert (provider.model, provider.voice, provider.instructions) == (OPENAI_MODEL, "marin", "Hi")
    assert provider.transcription_model == TRANSCRIPTION_MODEL
    assert (provider.tools, provider.greeting) == ((), None)
    echo = provider_for(Settings(), echo_url="ws://127.0.0.1:9/v1/realtime")
    assert isinstance(echo, OpenAIProvider)
    assert echo.endpoint == ProviderEndpoint("echo", "ws://127.0.0.1:9/v1/realtime")
    direct = OpenAIProvider.from_settings(
        echo.endpoint, Settings().for_provider("openai", model="gpt-realtime-2")
    )
    assert (direct.model, direct.voice) == ("gpt-realtime-2", "alloy")


def test_arguments_nested_too_deep_to_re_encode_are_a_malformed_frame() -> None:
    deep: Any = "x"
    for _ in range(300):  # orjson parses 1024 levels, encodes 254
        deep = [deep]
    output = [{"type": "function_call", "call_id": "c1", "name": "t", "arguments": deep}]
    frame = json.dumps(
        {"type": "response.done", "response": {"status": "completed", "output": output}}
    )
    with pytest.raises(RemoteProtocolError, match="arguments is not a string"):
        OpenAIRealtimeCodec().decode(frame)


@pytest.mark.parametrize(
    ("last", "answers"),
    [
        (ToolExchange("c1", "t", "{}", '{"ok":true}'), True),
        (Transcript("dtmf", "5"), True),
        (Transcript("caller", "hello"), False),
        (Transcript("agent", "hi"), False),
    ],
)
def test_a_resumed_session_answers_a_tool_result_or_key_presses_it_owes(
    last: Any, answers: bool
) -> None:
    """A result or key presses that arrived while the session was being replaced are replayed
    last: the new session must answer them (nobody else will ask)."""
    frames = OpenAIRealtimeCodec().opening([Transcript("caller", "hi"), last], first=False)
    assert (json.loads(frames[-1]) == {"type": "response.create"}) is answers
