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
from voxbridge.audio import pcm16_to_ulaw, ulaw_to_pcm16
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

SETUP_COMPLETE = json.dumps({"setupComplete": {}})


def opened(codec: GeminiCodec, history: Any, *, first: bool) -> list[str | bytes]:
    """What the link sends a session: ``setup`` alone, then, after ``setupComplete``, the rest."""
    frames = codec.opening(history, first=first)
    assert len(frames) == 1 and "setup" in json.loads(frames[0])  # nothing before the ack
    rest = codec.acknowledged(SETUP_COMPLETE)
    assert rest is not None
    return [*frames, *rest]


def test_only_setup_before_setup_complete() -> None:
    codec = GeminiCodec(greeting="Hello there")
    assert codec.awaits_acknowledgement
    (setup,) = codec.opening(HISTORY, first=False)
    assert "setup" in valid(setup)
    server_content = json.dumps({"serverContent": {"turnComplete": True}})
    for early in (server_content, "nope", b"\x00", json.dumps({"setupCompletely": 1})):
        assert codec.acknowledged(early) is None
    rest = codec.acknowledged(SETUP_COMPLETE.encode())  # Gemini sends JSON in binary frames too
    assert rest is not None and [next(iter(valid(f))) for f in rest] == [
        "clientContent",
        "realtimeInput",
    ]
    assert codec.acknowledged(SETUP_COMPLETE) == []  # sent once
    assert codec.decode(SETUP_COMPLETE) is None and codec.setup_complete  # still decoded


def test_setup_at_call_start_with_greeting() -> None:
    codec = GeminiCodec(instructions="be brief", tools=[END_CALL], greeting="Hello there")
    setup, greeting = (valid(f) for f in opened(codec, [], first=True))
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
    (setup,) = (
        valid(f) for f in opened(GeminiCodec(model="models/x", greeting=""), [], first=True)
    )
    assert setup["setup"]["model"] == "models/x"
    assert "tools" not in setup["setup"] and "systemInstruction" not in setup["setup"]


HISTORY = [
    Transcript("caller", "hi"),
    Transcript("agent", "hello"),
    Transcript("dtmf", "12#"),
    ToolExchange("fc-1", "lookup", '{"q":"x"}', '{"ok":true}'),
]


def test_history_replayed_without_a_handle() -> None:
    setup, content, nudge = (
        valid(f) for f in opened(GeminiCodec(greeting="Hi"), HISTORY, first=False)
    )
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


def test_the_greeting_belongs_to_the_first_session_only() -> None:
    # a session that resumes one dropped before any line was final has an empty history, and
    # still must not greet again
    assert opened(GeminiCodec(greeting="Hi"), [], first=False) == [
        GeminiCodec().opening([], first=False)[0]
    ]
    # key presses may be in the history of the first session: it greets all the same
    frames = opened(GeminiCodec(greeting="Hi"), [Transcript("dtmf", "1")], first=True)
    assert valid(frames[-1]) == {"realtimeInput": {"text": GREETING_PROMPT + "Hi"}}


def test_history_ending_with_the_agent_needs_no_nudge() -> None:
    history = [Transcript("caller", "hi"), Transcript("agent", "yes")]
    assert len(opened(GeminiCodec(), history, first=False)) == 2


def test_a_handle_resumes_without_replay() -> None:
    resumption = Resumption("h-7")
    (setup,) = (valid(f) for f in opened(GeminiCodec(resumption=resumption), HISTORY, first=False))
    assert setup["setup"]["sessionResumption"] == {"handle": "h-7"}
    assert "historyConfig" not in setup["setup"]
    # at call start a stale handle is never used
    (fresh,) = GeminiCodec(resumption=resumption).opening([], first=True)
    assert valid(fresh)["setup"]["sessionResumption"] == {}


def test_a_refused_handle_is_forgotten_and_the_next_session_replays() -> None:
    resumption = Resumption("h-7")
    codec = GeminiCodec(resumption=resumption)
    codec.opening(HISTORY, first=False)
    assert codec.close_reason(1008) is Reason.UPSTREAM_CLOSED  # not final: retry without it
    assert resumption.handle is None
    assert len(opened(GeminiCodec(resumption=resumption), HISTORY, first=False)) == 3


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


def test_go_away_during_an_answer_waits_for_its_end() -> None:
    # goAway while the model answers: SessionEnding says so, and comes again, not answering,
    # once the answer has ended (turnComplete), so the recycle cuts no answer in flight
    codec = GeminiCodec()
    assert not codec.answering
    assert isinstance(codec.decode(audio_frame(tone24(200))), AgentAudio)
    assert codec.answering
    assert codec.decode('{"goAway":{"timeLeft":"50s"}}') == SessionEnding(50.0, answering=True)
    assert codec.decode(audio_frame(tone24(20))) is not None  # the answer goes on
    assert codec.decode('{"serverContent":{"outputTranscription":{"text":"Noon."}}}') is None
    assert codec.decode('{"serverContent":{"generationComplete":true}}') is not None  # the tail
    assert codec.answering  # generated, not yet over: Gemini waits for the playback
    # the turn ends: urgent, out at once; the transcript follows with the next frame
    assert codec.decode('{"serverContent":{"turnComplete":true}}') == SessionEnding(
        None, answering=False
    )
    assert not codec.answering
    assert codec.decode('{"sessionResumptionUpdate":{"newHandle":"h2","resumable":true}}') == (
        Transcript("agent", "Noon.")
    )
    assert codec.decode('{"serverContent":{"turnComplete":true}}') is None  # said once


def test_go_away_while_silent_or_after_a_barge_in() -> None:
    silent = GeminiCodec()
    assert silent.decode('{"goAway":{"timeLeft":"50s"}}') == SessionEnding(50.0)
    assert silent.decode('{"serverContent":{"turnComplete":true}}') is None  # nothing to wait for
    cut = GeminiCodec()
    cut.decode('{"serverContent":{"outputTranscription":{"text":"Well"}}}')
    assert cut.decode('{"goAway":{"timeLeft":"9s"}}') == SessionEnding(9.0, answering=True)
    assert cut.decode('{"serverContent":{"interrupted":true}}') == SpeechStarted()
    # the answer ended there: the agent's cut line, then the SessionEnding, queued behind the
    # barge-in (one event a frame), come out with the next frames
    update = '{"sessionResumptionUpdate":{"resumable":false}}'
    assert cut.decode(update) == Transcript("agent", "Well")
    assert cut.decode(update) == SessionEnding(None)


def test_flush_gives_what_is_still_queued_and_the_lines_being_gathered() -> None:
    codec = GeminiCodec()
    codec.decode('{"serverContent":{"inputTranscription":{"text":"hello"}}}')
    codec.decode('{"serverContent":{"outputTranscription":{"text":"Hi, how"}}}')  # caller's out
    codec.decode('{"usageMetadata":{"promptTokenCount":7}}')  # returned at once: nothing queued
    frame = '{"serverContent":{"outputTranscription":{"text":" can I"}},"usageMetadata":{"responseTokenCount":3}}'
    assert codec.decode(frame) == Usage((("output_tokens", 3.0),))
    tool = '{"toolCall":{"functionCalls":[{"id":"a","name":"x"}]},"usageMetadata":{"promptTokenCount":1}}'
    assert codec.decode(tool) == ToolCall("a", "x", "{}")  # urgent; its usage waits
    assert codec.pending == 1
    assert codec.flush() == [Usage((("input_tokens", 1.0),)), Transcript("agent", "Hi, how can I")]
    assert codec.pending == 0 and codec.flush() == []


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
    first, second = await call.session([], first=True), await call.session(HISTORY, first=False)
    assert isinstance(first.codec, GeminiCodec) and isinstance(second.codec, GeminiCodec)
    assert first.codec.resumption is second.codec.resumption is call.resumption
    first.codec.decode('{"sessionResumptionUpdate":{"newHandle":"h9","resumable":true}}')
    (setup,) = second.codec.opening(HISTORY, first=False)
    assert valid(setup)["setup"]["sessionResumption"] == {"handle": "h9"}
    assert first.codec.voice == "Kore" and first.codec.greeting == "Hi"


# --- what the resampling does to the sound ---------------------------------------------------------

TONE_HZ = 1000
AMPLITUDE = 8000


def tone(rate: int, seconds: float = 1.0) -> np.ndarray:
    """A ``TONE_HZ`` sine at ``rate``, 16-bit."""
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * TONE_HZ * t) * AMPLITUDE).astype("<i2")


def assert_clean_tone(samples: np.ndarray, rate: int) -> None:
    """``samples`` (past the resampler's filter fill) are the tone: its peak frequency, its
    loudness, and no chunk-boundary clicks (no step larger than the sine's steepest, plus a
    margin for mu-law's quantisation)."""
    y = samples.astype(float)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * rate / len(y)
    assert abs(peak_hz - TONE_HZ) < 10, peak_hz
    assert np.sqrt(np.mean(y**2)) > 0.7 * AMPLITUDE / np.sqrt(2)  # not silence, not attenuated
    steepest = AMPLITUDE * 2 * np.pi * TONE_HZ / rate
    assert np.max(np.abs(np.diff(y))) < 1.3 * steepest


def test_the_caller_tone_reaches_gemini_as_the_same_tone_at_16khz() -> None:
    ulaw = pcm16_to_ulaw(tone(8000).tobytes())
    codec = GeminiCodec()
    out = bytearray()
    for i in range(0, len(ulaw), 160):  # 20 ms chunks, as the carrier sends them
        message = valid(codec.audio(base64.b64encode(ulaw[i : i + 160]).decode()))
        out += base64.b64decode(message["realtimeInput"]["audio"]["data"])
    samples = np.frombuffer(bytes(out), dtype="<i2")
    assert len(samples) == 16000 - 480  # all but the 30 ms the resampler holds back
    assert_clean_tone(samples[800:], 16000)  # past the filter fill (50 ms)


def test_the_agent_tone_reaches_the_caller_as_the_same_tone_at_8khz() -> None:
    pcm = tone(24000).tobytes()
    codec = GeminiCodec()
    out = bytearray()
    for i in range(0, len(pcm), 960):  # 20 ms chunks of 24 kHz PCM16
        event = codec.decode(audio_frame(pcm[i : i + 960]))
        if event is not None:
            assert isinstance(event, AgentAudio)
            out += event.audio
    tail = codec.decode('{"serverContent":{"turnComplete":true}}')
    assert isinstance(tail, AgentAudio)  # the resampler's tail, flushed at the end of the turn
    out += tail.audio
    samples = np.frombuffer(ulaw_to_pcm16(bytes(out)), dtype="<i2")
    assert len(samples) == 8000  # every sample of the second, none made up
    assert_clean_tone(samples[400:], 8000)
