"""DeepgramCodec and DeepgramProvider: synchronous tables, the deepgram-sdk types as the oracle.

Every frame the codec sends is parsed with the matching ``deepgram.agent.v1.types`` model, and no
field may land in a model's "extra" bucket (the SDK models allow unknown fields, so a misspelt
field would otherwise pass). Decoding is fuzzed: only ``RemoteProtocolError`` may escape.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pydantic
import pytest
from deepgram.agent.v1.types import (
    AgentV1AgentStartedSpeaking,
    AgentV1ConversationText,
    AgentV1Error,
    AgentV1FunctionCallRequest,
    AgentV1InjectUserMessage,
    AgentV1KeepAlive,
    AgentV1SendFunctionCallResponse,
    AgentV1Settings,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from voxbridge.agents import AgentConfig
from voxbridge.errors import Reason, RemoteProtocolError
from voxbridge.providers.deepgram import (
    DEEPGRAM_URL,
    DeepgramCodec,
    DeepgramProvider,
    deepgram_endpoint,
)
from voxbridge.providers.events import (
    AgentAudio,
    HistoryItem,
    ProviderError,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
)
from voxbridge.settings import SettingsError
from voxbridge.tools import Tool

LOOKUP = Tool(
    "lookup_order",
    "Find an order by its number.",
    {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]},
)


def no_extras(model: Any, path: str = "") -> None:
    """Fail if any (nested) SDK model kept a field it does not declare."""
    if isinstance(model, pydantic.BaseModel):
        assert not model.model_extra, f"unknown fields at {path or '<root>'}: {model.model_extra}"
        for name in type(model).model_fields:
            no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list | tuple):
        for index, item in enumerate(model):
            no_extras(item, f"{path}[{index}]")


def oracle(cls: type[pydantic.BaseModel], frame: str | bytes) -> dict[str, Any]:
    assert isinstance(frame, str)
    message = json.loads(frame)
    no_extras(cls.model_validate(message))
    return message  # type: ignore[no-any-return]


# --- opening ----------------------------------------------------------------------------------


def test_opening_at_call_start_is_settings_with_mulaw_8k_and_the_greeting() -> None:
    codec = DeepgramCodec(prompt="be brief", greeting="Hello, how can I help?", tools=[LOOKUP])
    assert not codec.awaits_acknowledgement  # audio may follow Settings at once
    frames = codec.opening([], first=True)
    assert len(frames) == 1
    settings_ = oracle(AgentV1Settings, frames[0])
    assert settings_ == {
        "type": "Settings",
        "audio": {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
        },
        "agent": {
            "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
            "think": {
                "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
                "prompt": "be brief",
                "functions": [
                    {
                        "name": "lookup_order",
                        "description": "Find an order by its number.",
                        "parameters": {
                            "type": "object",
                            "properties": {"number": {"type": "string"}},
                            "required": ["number"],
                        },
                    }
                ],
            },
            "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
            "greeting": "Hello, how can I help?",
        },
    }


@pytest.mark.parametrize("greeting", [None, ""])
def test_no_greeting_means_the_agent_waits(greeting: str | None) -> None:
    settings_ = oracle(AgentV1Settings, DeepgramCodec(greeting=greeting).opening([], first=True)[0])
    assert "greeting" not in settings_["agent"]
    assert "functions" not in settings_["agent"]["think"]
    assert "context" not in settings_["agent"]


def test_resume_replays_history_in_context_messages_and_does_not_greet() -> None:
    codec = DeepgramCodec(greeting="Hello!")
    history: list[HistoryItem] = [
        Transcript("caller", "my order is 42"),
        ToolExchange("fc-1", "lookup_order", '{"number":"42"}', '{"status":"shipped"}'),
        Transcript("agent", "It has shipped."),
        Transcript("dtmf", "1#"),
        Transcript("caller", "   "),  # nothing said: skipped
        Transcript("agent", ""),
    ]
    settings_ = oracle(AgentV1Settings, codec.opening(history, first=False)[0])
    assert "greeting" not in settings_["agent"]
    assert settings_["agent"]["context"] == {
        "messages": [
            {"type": "History", "role": "user", "content": "my order is 42"},
            {
                "type": "History",
                "function_calls": [
                    {
                        "id": "fc-1",
                        "name": "lookup_order",
                        "client_side": True,
                        "arguments": '{"number":"42"}',
                        "response": '{"status":"shipped"}',
                    }
                ],
            },
            {"type": "History", "role": "assistant", "content": "It has shipped."},
            {
                "type": "History",
                "role": "user",
                "content": "The caller pressed 1 # on the keypad.",
            },
        ]
    }


@pytest.mark.parametrize("history", [[], [Transcript("caller", "")]])
def test_a_resumed_session_never_greets_even_with_nothing_to_replay(
    history: list[HistoryItem],
) -> None:
    # a session that dropped before any line was final (or said nothing) is resumed with an
    # empty history: the greeting is still the first session's alone
    settings_ = json.loads(DeepgramCodec(greeting="Hi").opening(history, first=False)[0])
    assert "greeting" not in settings_["agent"] and "context" not in settings_["agent"]


def test_the_first_session_greets_after_key_presses_too() -> None:
    # keys pressed while the first session opened are in its history: it greets all the same
    codec = DeepgramCodec(greeting="Hi")
    settings_ = oracle(AgentV1Settings, codec.opening([Transcript("dtmf", "1")], first=True)[0])
    assert settings_["agent"]["greeting"] == "Hi"
    assert len(settings_["agent"]["context"]["messages"]) == 1


# --- caller audio -----------------------------------------------------------------------------


def test_caller_audio_is_sent_as_its_mulaw_bytes() -> None:
    audio = bytes(range(256)) * 2
    assert DeepgramCodec().audio(base64.b64encode(audio).decode()) == audio


@pytest.mark.parametrize("payload", ["QUJ", "@@@@", "QUJD=", "QQ==QQ=="])
def test_caller_audio_that_is_not_strict_base64_is_refused(payload: str) -> None:
    with pytest.raises(RemoteProtocolError):
        DeepgramCodec().audio(payload)


# --- decoding ---------------------------------------------------------------------------------

DECODED: list[tuple[str | bytes, object]] = [
    (b"\x00\x7f\xff", AgentAudio(b"\x00\x7f\xff")),
    (b"\xff", AgentAudio(b"\xff")),  # any length: one byte is one sample
    (b"", None),
    ('{"type":"Welcome","request_id":"r-1"}', None),
    ('{"type":"SettingsApplied"}', None),
    (
        '{"type":"ConversationText","role":"user","content":"hello there"}',
        Transcript("caller", "hello there"),
    ),
    (
        '{"type":"ConversationText","role":"assistant","content":"hi!",'
        '"conversational_behavior":"default"}',
        Transcript("agent", "hi!"),
    ),
    ('{"type":"ConversationText","role":"assistant","content":"  "}', None),
    ('{"type":"ConversationText","role":"system","content":"x"}', None),
    ('{"type":"UserStartedSpeaking"}', SpeechStarted()),
    ('{"type":"AgentThinking","content":"hmm"}', None),
    (
        '{"type":"AgentStartedSpeaking","total_latency":0.4,"tts_latency":0.1,"ttt_latency":0.3}',
        ResponseStarted(),
    ),
    ('{"type":"AgentAudioDone"}', None),
    (
        '{"type":"FunctionCallRequest","functions":[{"id":"fc-1","name":"lookup_order",'
        '"arguments":"{\\"number\\":\\"42\\"}","client_side":true}]}',
        ToolCall("fc-1", "lookup_order", '{"number":"42"}'),
    ),
    (
        '{"type":"FunctionCallRequest","functions":[{"id":"a","name":"x","arguments":"",'
        '"client_side":true},{"id":"b","name":"y","arguments":"{}","client_side":false},'
        '{"id":"c","name":"z","arguments":"{}","client_side":true}]}',
        ResponseDone(tool_calls=(ToolCall("a", "x", "{}"), ToolCall("c", "z", "{}"))),
    ),
    (
        '{"type":"FunctionCallRequest","functions":[{"id":"b","name":"y","arguments":"{}",'
        '"client_side":false}]}',
        None,
    ),
    (
        '{"type":"FunctionCallResponse","id":"b","name":"y","content":"server-side result"}',
        None,
    ),
    (
        '{"type":"Error","code":"INVALID_SETTINGS","description":"bad think provider"}',
        ProviderError("INVALID_SETTINGS", "bad think provider"),
    ),
    ('{"type":"Error","message":"old shape"}', ProviderError("unknown", "old shape")),
    ('{"type":"Warning","code":"W","description":"careful"}', None),
    ('{"type":"History","role":"user","content":"hello"}', None),
    ('{"type":"SomethingNew","x":1}', None),
]


@pytest.mark.parametrize(("frame", "event"), DECODED)
def test_decode(frame: str | bytes, event: object) -> None:
    assert DeepgramCodec().decode(frame) == event


def test_the_table_speaks_the_sdk_shapes() -> None:
    """The server messages the table maps are valid for the SDK's own types."""
    models: dict[str, type[pydantic.BaseModel]] = {
        "ConversationText": AgentV1ConversationText,
        "FunctionCallRequest": AgentV1FunctionCallRequest,
        "AgentStartedSpeaking": AgentV1AgentStartedSpeaking,
    }
    for frame, _ in DECODED:
        if isinstance(frame, str):
            message = json.loads(frame)
            model = models.get(message["type"])
            if model is not None:
                no_extras(model.model_validate(message))
    error = '{"type":"Error","code":"INVALID_SETTINGS","description":"bad think provider"}'
    no_extras(AgentV1Error.model_validate(json.loads(error)))


MALFORMED = [
    "not json",
    "[1, 2]",
    '{"type": 3}',
    '{"no": "type"}',
    '{"type":"ConversationText","role":"user"}',
    '{"type":"ConversationText","role":1,"content":"x"}',
    '{"type":"FunctionCallRequest"}',
    '{"type":"FunctionCallRequest","functions":[1]}',
    '{"type":"FunctionCallRequest","functions":[{"id":"","name":"x","arguments":"{}",'
    '"client_side":true}]}',
    '{"type":"FunctionCallRequest","functions":[{"id":"a","name":"x","arguments":{},'
    '"client_side":true}]}',
    '{"type":"FunctionCallRequest","functions":[{"id":"a","name":"x","arguments":"{}"}]}',
    '{"type":"Error","code":5,"description":"x"}',
    '{"type":"Error","code":"x","description":["x"]}',
]


@pytest.mark.parametrize("frame", MALFORMED)
def test_malformed_frames_raise_remote_protocol_error(frame: str) -> None:
    with pytest.raises(RemoteProtocolError):
        DeepgramCodec().decode(frame)


def test_error_text_is_bounded() -> None:
    event = DeepgramCodec().decode(
        json.dumps({"type": "Error", "code": "C" * 100, "description": "d" * 9999})
    )
    assert isinstance(event, ProviderError)
    assert len(event.code) == 64 and len(event.message) == 500


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_types = st.sampled_from(
    ["ConversationText", "FunctionCallRequest", "Error", "UserStartedSpeaking", "Welcome", "x"]
)
_messages = st.builds(
    lambda kind, body: json.dumps({**body, "type": kind}),
    _types,
    st.dictionaries(
        st.sampled_from(
            ["role", "content", "functions", "code", "description", "message", "id", "name"]
        ),
        _json_values,
        max_size=5,
    ),
)


@settings(max_examples=150)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), _messages))
def test_decode_fuzz_only_raises_remote_protocol_error(frame: str | bytes) -> None:
    try:
        event = DeepgramCodec().decode(frame)
    except RemoteProtocolError:
        return
    if isinstance(event, AgentAudio):
        assert isinstance(frame, bytes) and event.audio == frame


# --- client messages --------------------------------------------------------------------------


def test_interrupt_sends_nothing() -> None:
    assert DeepgramCodec().interrupt([Truncation("item", 120)]) == []
    assert DeepgramCodec().interrupt([]) == []


def test_tool_result_is_a_function_call_response() -> None:
    exchange = ToolExchange("fc-1", "lookup_order", '{"number":"42"}', '{"status":"shipped"}')
    (frame,) = DeepgramCodec().tool_result(exchange, known=True)
    assert oracle(AgentV1SendFunctionCallResponse, frame) == {
        "type": "FunctionCallResponse",
        "id": "fc-1",
        "name": "lookup_order",
        "content": '{"status":"shipped"}',
    }


def test_tool_result_for_a_replaced_session_is_an_inject_user_message() -> None:
    # the new session knows no call id it did not make: the agent is told the whole exchange
    exchange = ToolExchange("fc-1", "lookup_order", '{"number":"42"}', '{"error":"x"}', "error")
    (frame,) = DeepgramCodec().tool_result(exchange, known=False)
    assert oracle(AgentV1InjectUserMessage, frame) == {
        "type": "InjectUserMessage",
        "content": 'The result of the tool call lookup_order({"number":"42"}), asked for before '
        'the connection was restored: {"error":"x"}',
    }


def test_dtmf_is_an_inject_user_message() -> None:
    (frame,) = DeepgramCodec().dtmf("12#")
    assert oracle(AgentV1InjectUserMessage, frame) == {
        "type": "InjectUserMessage",
        "content": "The caller pressed 1 2 # on the keypad.",
    }


def test_keepalive_and_closing() -> None:
    keepalive = DeepgramCodec().keepalive
    assert oracle(AgentV1KeepAlive, keepalive.frame) == {"type": "KeepAlive"}  # a text frame
    assert keepalive.interval == 8.0  # Deepgram's "Agent Keep Alive": every 8 s while idle
    assert DeepgramCodec().closing() == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, Reason.UPSTREAM_CLOSED),
        (1001, Reason.UPSTREAM_CLOSED),
        (1006, Reason.UPSTREAM_CLOSED),
        (1011, Reason.UPSTREAM_CLOSED),
        (1003, Reason.UPSTREAM_REJECTED),
        (1007, Reason.UPSTREAM_REJECTED),
        (1008, Reason.UPSTREAM_REJECTED),
    ],
)
def test_close_reasons(code: int, reason: Reason) -> None:
    assert DeepgramCodec().close_reason(code) is reason


# --- the provider -----------------------------------------------------------------------------


def test_endpoint_carries_the_token_and_hides_it() -> None:
    endpoint = deepgram_endpoint("sekrit")
    assert endpoint.url == DEEPGRAM_URL and endpoint.secure
    assert endpoint.headers == (("Authorization", "Token sekrit"),)
    assert "sekrit" not in repr(endpoint)
    assert deepgram_endpoint(None, "ws://127.0.0.1:9/v1/agent/converse").headers == ()
    with pytest.raises(SettingsError):
        deepgram_endpoint("k", "https://agent.deepgram.com/v1/agent/converse")


async def test_provider_session_and_for_agent() -> None:
    provider = DeepgramProvider(deepgram_endpoint("k"), prompt="default", greeting="Hi")
    agent = AgentConfig(model="gpt-4.1", voice="aura-2-zeus-en", instructions="be terse")
    configured = provider.for_agent(agent, [LOOKUP])
    assert provider.tools == () and provider.prompt == "default"
    session = await configured.session([], first=True)
    assert session.endpoint == provider.endpoint and session.usage is None
    settings_ = oracle(AgentV1Settings, session.codec.opening([], first=True)[0])
    assert settings_["agent"]["think"]["provider"]["model"] == "gpt-4.1"
    assert settings_["agent"]["think"]["prompt"] == "be terse"
    assert settings_["agent"]["speak"]["provider"]["model"] == "aura-2-zeus-en"
    assert settings_["agent"]["greeting"] == "Hi"
    assert [f["name"] for f in settings_["agent"]["think"]["functions"]] == ["lookup_order"]
    assert "Token" not in repr(configured)
