"""The Gemini Live codec: synchronous tables of exact frames, every client frame validated against
``google.genai.types.LiveClientMessage`` (extra fields forbidden), hypothesis for bad input (only
``RemoteProtocolError`` may escape ``decode``), and the provider's endpoint and resumption."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from google.genai import types as genai
from hypothesis import given, settings
from hypothesis import strategies as st

from voxbridge.agents import AgentConfig
from voxbridge.errors import BadAudio, Reason, RemoteProtocolError
from voxbridge.providers.events import (
    AgentAudio,
    SessionEnding,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Usage,
)
from voxbridge.providers.gemini import (
    GEMINI_URL,
    GREETING_PROMPT,
    RESUME_PROMPT,
    GeminiCodec,
    GeminiProvider,
    Resumption,
    gemini_endpoint,
)
from voxbridge.tools import END_CALL

SILENCE_20MS = base64.b64encode(b"\xff" * 160).decode()


def valid(frame: str | bytes) -> dict[str, Any]:
    """``frame`` checked against the SDK's client message model; returns it parsed."""
    genai.LiveClientMessage.model_validate_json(frame)
    parsed: dict[str, Any] = json.loads(frame)
    return parsed


def audio_frame(pcm: bytes, mime: str = "audio/pcm;rate=24000") -> str:
    part = {"inlineData": {"mimeType": mime, "data": base64.b64encode(pcm).decode()}}
    return json.dumps({"serverContent": {"modelTurn": {"parts": [part]}}})


def tone24(ms: int) -> bytes:
    n = np.arange(ms * 24)
    return bytes((np.sin(n * 0.1) * 8000).astype("<i2").tobytes())


# --- opening --------------------------------------------------------------------------------


def test_setup_at_call_start_with_greeting() -> None:
    codec = GeminiCodec(instructions="be brief", tools=[END_CALL], greeting="Hello there")
    setup, greeting = (valid(f) for f in codec.opening([]))
    assert setup["setup"]["model"] == "models/gemini-2.5-flash-native-audio-latest"
    assert setup["setup"]["generationConfig"] == {
        "responseModalities": ["AUDIO"],
        "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}},
    }
    assert setup["setup"]["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    (declaration,) = setup["setup"]["tools"][0]["functionDeclarations"]
    assert declaration["name"] == "end_call"
    assert declaration["parametersJsonSchema"] == dict(END_CALL.parameters)
    assert setup["setup"]["sessionResumption"] == {}
    assert setup["setup"]["inputAudioTranscription"] == {}
    assert setup["setup"]["outputAudioTranscription"] == {}
    assert setup["setup"]["contextWindowCompression"] == {"slidingWindow": {}}
    assert "historyConfig" not in setup["setup"]
    assert greeting == {"realtimeInput": {"text": GREETING_PROMPT + "Hello there"}}


def test_setup_without_greeting_instructions_or_tools() -> None:
    (setup,) = (valid(f) for f in GeminiCodec(model="models/x", greeting="").opening([]))
    assert setup["setup"]["model"] == "models/x"
    assert "tools" not in setup["setup"] and "systemInstruction" not in setup["setup"]


HISTORY = [
    Transcript("caller", "hi"),
    Transcript("agent", "hello"),
    Transcript("dtmf", "12#"),
    ToolExchange("fc-1", "lookup", '{"q":"x"}', '{"ok":true}'),
]


def test_history_replayed_without_a_handle() -> None:
    setup, content, nudge = (valid(f) for f in GeminiCodec(greeting="Hi").opening(HISTORY))
    assert setup["setup"]["historyConfig"] == {"initialHistoryInClientContent": True}
    assert content == {
        "clientContent": {
            "turns": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "user", "parts": [{"text": "The caller pressed 1 2 # on the keypad."}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"id": "fc-1", "name": "lookup", "args": {"q": "x"}}}
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "id": "fc-1",
                                "name": "lookup",
                                "response": {"ok": True},
                            }
                        }
                    ],
                },
            ],
            "turnComplete": True,
        }
    }
    assert nudge == {"realtimeInput": {"text": RESUME_PROMPT}}  # no greeting on a resume


def test_history_ending_with_the_agent_needs_no_nudge() -> None:
    frames = GeminiCodec().opening([Transcript("caller", "hi"), Transcript("agent", "yes")])
    assert len(frames) == 2


def test_a_handle_resumes_without_replay() -> None:
    resumption = Resumption("h-7")
    (setup,) = (valid(f) for f in GeminiCodec(resumption=resumption).opening(HISTORY))
    assert setup["setup"]["sessionResumption"] == {"handle": "h-7"}
    assert "historyConfig" not in setup["setup"]
    # at call start a stale handle is never used
    (fresh,) = GeminiCodec(resumption=resumption).opening([])
    assert valid(fresh)["setup"]["sessionResumption"] == {}


def test_a_refused_handle_is_forgotten_and_the_next_session_replays() -> None:
    resumption = Resumption("h-7")
    codec = GeminiCodec(resumption=resumption)
    codec.opening(HISTORY)
    assert codec.close_reason(1008) is Reason.UPSTREAM_CLOSED  # not final: retry without it
    assert resumption.handle is None
    assert len(GeminiCodec(resumption=resumption).opening(HISTORY)) == 3


# --- client messages ------------------------------------------------------------------------


def test_caller_audio_is_resampled_to_16khz() -> None:
    codec = GeminiCodec()
    sizes = []
    for _ in range(5):
        message = valid(codec.audio(SILENCE_20MS))
        audio = message["realtimeInput"]["audio"]
        assert audio["mimeType"] == "audio/pcm;rate=16000"
        sizes.append(len(base64.b64decode(audio["data"])))
    assert sizes == [0, 320, 640, 640, 640]  # 100 samples of filter delay, then 20 ms each


def test_caller_audio_must_be_base64() -> None:
    with pytest.raises(RemoteProtocolError):
        GeminiCodec().audio("not base64!")


def test_tool_result_known_and_replayed() -> None:
    codec = GeminiCodec()
    exchange = ToolExchange("fc-1", "lookup", "{}", '"plain"')
    (known,) = (valid(f) for f in codec.tool_result(exchange, known=True))
    assert known == {
        "toolResponse": {
            "functionResponses": [{"id": "fc-1", "name": "lookup", "response": {"output": "plain"}}]
        }
    }
    (replayed,) = (valid(f) for f in codec.tool_result(exchange, known=False))
    assert [turn["role"] for turn in replayed["clientContent"]["turns"]] == ["model", "user"]
    assert replayed["clientContent"]["turnComplete"] is True


def test_dtmf_interrupt_closing() -> None:
    codec = GeminiCodec()
    (dtmf,) = (valid(f) for f in codec.dtmf("1#"))
    assert dtmf == {"realtimeInput": {"text": "The caller pressed 1 # on the keypad."}}
    assert codec.interrupt([]) == [] and codec.closing() == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, Reason.UPSTREAM_CLOSED),
        (1011, Reason.UPSTREAM_CLOSED),
        (1007, Reason.UPSTREAM_REJECTED),
        (1008, Reason.UPSTREAM_REJECTED),
    ],
)
def test_close_reasons(code: int, reason: Reason) -> None:
    assert GeminiCodec().close_reason(code) is reason


# --- server messages ------------------------------------------------------------------------


def test_agent_audio_is_resampled_to_8khz_mulaw() -> None:
    codec = GeminiCodec()
    sizes = []
    for _ in range(4):
        event = codec.decode(audio_frame(tone24(20)))
        sizes.append(len(event.audio) if isinstance(event, AgentAudio) else 0)
    assert sizes == [0, 120, 160, 160]
    tail = codec.decode('{"serverContent":{"turnComplete":true}}')
    assert isinstance(tail, AgentAudio) and tail.audio  # the resampler's tail is flushed


@pytest.mark.parametrize(
    "frame",
    [
        audio_frame(b"\x00\x01\x02"),  # not whole samples
        audio_frame(b"\x00\x00", "audio/pcm;rate=16000"),
        audio_frame(b"\x00\x00", "audio/wav"),
        '{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm",'
        '"data":"AA=A"}}]}}}',
        '{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"data":"AAAA"}}]}}}',
    ],
)
def test_bad_agent_audio(frame: str) -> None:
    with pytest.raises(BadAudio):
        GeminiCodec().decode(frame)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"serverContent":[]}',
        '{"serverContent":{"interrupted":"yes"}}',
        '{"serverContent":{"modelTurn":{"parts":{}}}}',
        '{"serverContent":{"inputTranscription":{"text":3}}}',
        '{"toolCall":{"functionCalls":[{"name":"x"}]}}',
        '{"toolCall":{"functionCalls":[{"id":"1","name":"x","args":[]}]}}',
        '{"usageMetadata":{"promptTokenCount":-1}}',
        '{"sessionResumptionUpdate":{"newHandle":5,"resumable":true}}',
        '{"goAway":{"timeLeft":"soon"}}',
    ],
)
def test_malformed(frame: str) -> None:
    with pytest.raises(RemoteProtocolError):
        GeminiCodec().decode(frame)


def test_interrupted_is_speech_started_and_ends_the_agent_line() -> None:
    codec = GeminiCodec()
    assert codec.decode('{"serverContent":{"outputTranscription":{"text":"Hello, I"}}}') is None
    assert codec.decode('{"serverContent":{"interrupted":true}}') == SpeechStarted()
    assert codec.decode('{"sessionResumptionUpdate":{"resumable":false}}') == Transcript(
        "agent", "Hello, I"
    )


def test_transcripts_turn_complete_and_usage() -> None:
    codec = GeminiCodec()
    frames = [
        '{"serverContent":{"inputTranscription":{"text":"what time"}}}',
        '{"serverContent":{"inputTranscription":{"text":" is it"}}}',
        '{"serverContent":{"outputTranscription":{"text":"It is"}}}',
        '{"serverContent":{"outputTranscription":{"text":" noon."}}}',
        '{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":30,'
        '"responseTokenCount":20,"cachedContentTokenCount":4,"promptTokensDetails":['
        '{"modality":"TEXT","tokenCount":10},{"modality":"AUDIO","tokenCount":20}],'
        '"responseTokensDetails":[{"modality":"AUDIO","tokenCount":20}]}}',
        '{"sessionResumptionUpdate":{"newHandle":"h1","resumable":true}}',
    ]
    events = [codec.decode(f) for f in frames]
    assert events == [
        None,
        None,
        Transcript("caller", "what time is it"),
        None,
        Transcript("agent", "It is noon."),
        Usage(
            (
                ("input_text_tokens", 10.0),
                ("input_audio_tokens", 20.0),
                ("output_audio_tokens", 20.0),
                ("input_cached_tokens", 4.0),
            )
        ),
    ]
    assert codec.resumption.handle == "h1" and codec.pending == 0
    codec.decode('{"sessionResumptionUpdate":{"resumable":false}}')
    assert codec.resumption.handle is None


def test_usage_without_details() -> None:
    event = GeminiCodec().decode('{"usageMetadata":{"promptTokenCount":7,"responseTokenCount":3}}')
    assert event == Usage((("input_tokens", 7.0), ("output_tokens", 3.0)))


def test_tool_calls_setup_complete_go_away() -> None:
    codec = GeminiCodec()
    assert codec.decode('{"setupComplete":{}}') is None and codec.setup_complete
    frame = '{"toolCall":{"functionCalls":[{"id":"a","name":"x","args":{"n":1}},{"id":"b","name":"y"}]}}'
    assert codec.decode(frame) == ToolCall("a", "x", '{"n":1}')
    # goAway is urgent: it comes out at once, ahead of the queued second call
    assert codec.decode('{"goAway":{"timeLeft":"50s"}}') == SessionEnding(50.0)
    assert codec.ending_in == 50.0
    assert codec.decode(b'{"serverContent":{}}') == ToolCall("b", "y", "{}")  # binary JSON too
    assert codec.decode(b'{"serverContent":{}}') is None


@pytest.mark.parametrize(
    ("time_left", "seconds"), [("50s", 50.0), ("12.5s", 12.5), ("0s", 0.0), (None, None)]
)
def test_go_away_is_session_ending(time_left: str | None, seconds: float | None) -> None:
    # the frame as google-genai's own LiveServerMessage serialises it
    message = genai.LiveServerMessage(go_away=genai.LiveServerGoAway(time_left=time_left))
    frame = message.model_dump_json(by_alias=True, exclude_none=True)
    assert GeminiCodec().decode(frame) == SessionEnding(seconds)


@pytest.mark.parametrize("time_left", ['"soon"', '"-1s"', "50", '"1e99s"'])
def test_a_bad_go_away_time_is_malformed(time_left: str) -> None:
    with pytest.raises(RemoteProtocolError):
        GeminiCodec().decode(f'{{"goAway":{{"timeLeft":{time_left}}}}}')


def test_no_keepalive_message() -> None:
    assert GeminiCodec().keepalive is None  # WebSocket pings and caller audio: nothing else


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_decode_fuzz_raw(frame: str | bytes) -> None:
    try:
        GeminiCodec().decode(frame)
    except RemoteProtocolError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "serverContent",
        "toolCall",
        "usageMetadata",
        "sessionResumptionUpdate",
        "goAway",
        "setupComplete",
        "modelTurn",
        "parts",
        "inlineData",
        "mimeType",
        "data",
        "interrupted",
        "turnComplete",
        "inputTranscription",
        "outputTranscription",
        "text",
        "functionCalls",
        "args",
        "promptTokensDetails",
        "newHandle",
        "resumable",
        "timeLeft",
    ]
)
_shaped = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.just("AAAA"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_shaped, min_size=1, max_size=4))
def test_decode_fuzz_shaped(messages: list[Any]) -> None:
    codec = GeminiCodec()
    for message in messages:
        try:
            codec.decode(json.dumps(message))
        except RemoteProtocolError:
            pass


# --- provider -------------------------------------------------------------------------------


def test_endpoint_keeps_the_key_out_of_repr() -> None:
    endpoint = gemini_endpoint(GEMINI_URL, "sekrit")
    assert endpoint.url.endswith("?key=sekrit")
    assert endpoint.resource.endswith("BidiGenerateContent?key=sekrit")
    assert "sekrit" not in repr(endpoint)
    assert "sekrit" not in repr(GeminiProvider(endpoint))
    assert gemini_endpoint(GEMINI_URL, None).url == GEMINI_URL
    bare = gemini_endpoint("ws://127.0.0.1:9", "sekrit")
    assert bare.resource.startswith("/ws/google.ai.") and "sekrit" not in repr(bare)


async def test_provider_sessions_share_one_resumption_per_call() -> None:
    base = GeminiProvider(gemini_endpoint(GEMINI_URL, "k"), instructions="x")
    call = base.for_agent(AgentConfig(name="a", voice="Kore", greeting="Hi"), [END_CALL])
    other = base.for_agent(AgentConfig(name="a"), [])
    assert call.resumption is not other.resumption
    first, second = await call.session([]), await call.session(HISTORY)
    assert isinstance(first.codec, GeminiCodec) and isinstance(second.codec, GeminiCodec)
    assert first.codec.resumption is second.codec.resumption is call.resumption
    first.codec.decode('{"sessionResumptionUpdate":{"newHandle":"h9","resumable":true}}')
    (setup,) = second.codec.opening(HISTORY)
    assert valid(setup)["setup"]["sessionResumption"] == {"handle": "h9"}
    assert first.codec.voice == "Kore" and first.codec.greeting == "Hi"
