"""Tests of the sans-IO Telnyx media-stream codec (voxbridge.carriers.telnyx).

Tables first (Telnyx's documented frames -> neutral events, commands -> frames, bad input ->
the reason), then the choices the module docstring makes (arrival order counted, ``error`` frames
counted, unknown events ignored, outbound-track media dropped, L16 big-endian), then hypothesis:
whatever the codec is fed, only its protocol error comes out, and a refused frame leaves the state
exactly as it was.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import carrierkit
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxbridge.audio import pcm16_to_ulaw, ulaw_to_pcm16
from voxbridge.carriers.base import (
    MULAW_8K,
    AudioFormat,
    CallerAudio,
    Capabilities,
    Dtmf,
    LocalProtocolError,
    MarkPlayed,
    StreamStarted,
    StreamStopped,
)
from voxbridge.carriers.telnyx import (
    MediaFormat,
    Start,
    TelnyxError,
    TelnyxStream,
    audio_format,
)
from voxbridge.carriers.telnyx_webhooks import SPEC, TelnyxSettings
from voxbridge.errors import RemoteProtocolError, SettingsError
from voxbridge.testing.telnyx_wire import (
    encode_connected,
    encode_dtmf,
    encode_error,
    encode_mark_echo,
    encode_media,
    encode_start,
    encode_stop,
)

STREAM = "32de0dea-53cb-4b21-89a4-9e8d3a2f5b8c"
CALL = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"
USER = "3e6f995f-85f7-4705-9741-53b116d28237"
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The documented frames (Telnyx's streaming_start page and the AsyncAPI reference, as quoted in
# PROTOCOLS.md D.1), verbatim but for the ids.
DOC_CONNECTED = '{"event":"connected","version":"1.0.0"}'
DOC_START = json.dumps(
    {
        "event": "start",
        "sequence_number": "1",
        "start": {
            "user_id": USER,
            "call_control_id": CALL,
            "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
        "stream_id": STREAM,
    }
)
DOC_MEDIA = json.dumps(
    {
        "event": "media",
        "sequence_number": "4",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "no+JhoaJjpzS"},
        "stream_id": STREAM,
    }
)
DOC_MARK = json.dumps(
    {"event": "mark", "sequence_number": "4", "stream_id": STREAM, "mark": {"name": "my label"}}
)
DOC_DTMF = json.dumps(
    {"event": "dtmf", "stream_id": STREAM, "sequence_number": "5", "dtmf": {"digit": "1"}}
)
DOC_STOP = json.dumps(
    {
        "event": "stop",
        "sequence_number": "5",
        "stop": {"user_id": USER, "call_control_id": CALL},
        "stream_id": STREAM,
    }
)


def swap(pcm: bytes) -> bytes:
    """16-bit samples with their byte order reversed."""
    return np.frombuffer(pcm, dtype="<i2").astype(">i2").tobytes()


def started(**start: Any) -> TelnyxStream:
    stream = TelnyxStream()
    stream.decode(encode_connected())
    stream.decode(encode_start(STREAM, CALL, USER, **start))
    return stream


def stopped() -> TelnyxStream:
    stream = started()
    stream.decode(encode_stop(STREAM, CALL, USER, 9))
    return stream


def connected() -> TelnyxStream:
    stream = TelnyxStream()
    stream.decode(encode_connected())
    return stream


SETUPS = {"fresh": TelnyxStream, "connected": connected, "started": started, "stopped": stopped}


def snapshot(stream: TelnyxStream) -> tuple[Any, ...]:
    """Everything a frame may change."""
    return (
        stream._connected,
        stream.start,
        stream.stopped,
        stream._down,
        stream._up,
        stream._highest_chunk,
        stream.out_of_order,
        stream.errors,
        stream.ignored,
        stream.last_error,
    )


# ----------------------------------------------------------------------------------- in: table


def test_documented_frames_decode_to_neutral_events() -> None:
    stream = TelnyxStream()
    assert stream.decode(DOC_CONNECTED) is None
    start = stream.decode(DOC_START)
    assert start == StreamStarted(
        call_id=CALL, stream_id=STREAM, account_id=USER, custom_parameters={}, audio_format=MULAW_8K
    )
    assert isinstance(start, StreamStarted)
    assert start.details == Start(
        stream_id=STREAM,
        call_control_id=CALL,
        user_id=USER,
        client_state="aGF2ZSBhIG5pY2UgZGF5ID1d",
        media_format=MediaFormat("PCMU", 8000, 1),
        custom_parameters={},
    )
    assert stream.decode(DOC_MEDIA) == CallerAudio("no+JhoaJjpzS")
    assert stream.decode(DOC_MARK) == MarkPlayed("my label")
    assert stream.decode(DOC_DTMF) == Dtmf("1")
    assert stream.decode(DOC_STOP) == StreamStopped()
    assert stream.stopped and stream.started and stream.stream_id == STREAM


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(encode_connected(), None, id="connected"),
        pytest.param(
            encode_start(
                STREAM, CALL, USER, custom_parameters={"voxbridge_token": "t.k.n", "agent": "a"}
            ),
            StreamStarted(CALL, STREAM, USER, {"voxbridge_token": "t.k.n", "agent": "a"}),
            id="start-with-parameters",
        ),
    ],
)
def test_fresh_frames(frame: str, expected: object) -> None:
    assert TelnyxStream().decode(frame) == expected


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(
            encode_media(STREAM, "//8=", chunk=1, timestamp=0, sequence_number=2),
            CallerAudio("//8="),
            id="media",
        ),
        pytest.param(encode_dtmf(STREAM, "#", 3), Dtmf("#"), id="dtmf"),
        pytest.param(encode_mark_echo(STREAM, 'a "b"', 4), MarkPlayed('a "b"'), id="mark"),
        pytest.param(encode_stop(STREAM, CALL, USER, 5), StreamStopped(), id="stop"),
        pytest.param('{"event":"stop"}', StreamStopped(), id="stop-bare"),
        pytest.param(
            encode_media(STREAM, "//8=", chunk=1, timestamp=0, sequence_number=2, track="outbound"),
            None,
            id="outbound-track-dropped",
        ),
        pytest.param(encode_error(STREAM, 100003, "Malformed frame", "x"), None, id="error"),
        pytest.param('{"event":"transcription","stream_id":"x"}', None, id="unknown-ignored"),
    ],
)
def test_started_frames(frame: str, expected: object) -> None:
    assert started().decode(frame) == expected


def test_custom_parameters_as_call_control_pairs() -> None:
    frame = json.loads(encode_start(STREAM, CALL, USER))
    frame["start"]["custom_parameters"] = [
        {"name": "voxbridge_token", "value": "abc"},
        {"name": "agent", "value": "sales"},
    ]
    event = TelnyxStream().decode(json.dumps(frame))
    assert isinstance(event, StreamStarted)
    assert event.custom_parameters == {"voxbridge_token": "abc", "agent": "sales"}


def test_null_optional_fields_read_as_empty() -> None:
    frame = json.loads(encode_start(STREAM, CALL, USER))
    frame["start"].update({"client_state": None, "from": None, "to": None, "user_id": None})
    frame["start"]["custom_parameters"] = None
    event = TelnyxStream().decode(json.dumps(frame))
    assert isinstance(event, StreamStarted) and event.account_id == ""
    assert event.details.client_state == "" and event.details.to == ""


# ---------------------------------------------------------------------- the documented choices


def test_media_is_forwarded_in_arrival_order_and_late_chunks_are_counted() -> None:
    stream = started()
    payloads = {n: base64.b64encode(bytes([n]) * 160).decode() for n in range(1, 6)}
    arrival = [1, 3, 2, 4, 4, 5]  # 2 arrives late, 4 twice
    out = [
        stream.decode(
            encode_media(STREAM, payloads[n], chunk=n, timestamp=20 * n, sequence_number=n)
        )
        for n in arrival
    ]
    assert out == [CallerAudio(payloads[n]) for n in arrival]
    assert stream.out_of_order == 2


def test_error_frames_are_counted_not_fatal() -> None:
    stream = started()
    assert stream.decode(encode_error(STREAM, 100002, "Unknown error", "y" * 500)) is None
    assert stream.decode('{"event":"error"}') is None
    assert stream.errors == 2
    assert stream.last_error == TelnyxError("", "", "")
    stream.decode(encode_error(STREAM, 100003, "Malformed frame", "bad payload"))
    assert stream.last_error == TelnyxError("100003", "Malformed frame", "bad payload")
    assert stream.decode(DOC_MEDIA) == CallerAudio("no+JhoaJjpzS")  # the stream goes on


def test_error_frame_detail_is_cut() -> None:
    stream = TelnyxStream()  # an error may come before start
    stream.decode(encode_error(STREAM, 1, "t" * 500, "d" * 500))
    assert stream.last_error == TelnyxError("1", "t" * 200, "d" * 200)


def test_unknown_events_are_counted() -> None:
    stream = started()
    stream.decode('{"event":"streaming.something"}')
    assert stream.ignored == 1 and stream.started


# --------------------------------------------------------------------------------- L16 audio


def test_l16_8k_caller_audio_is_big_endian_to_mulaw() -> None:
    stream = started(encoding="L16", sample_rate=8000)
    assert stream.start is not None and stream.start.media_format == MediaFormat("L16", 8000, 1)
    little = b"".join(v.to_bytes(2, "little", signed=True) for v in (0, 1000, -1000, 32000))
    big = swap(little)
    event = stream.decode(
        encode_media(
            STREAM, base64.b64encode(big).decode(), chunk=1, timestamp=0, sequence_number=1
        )
    )
    assert event == CallerAudio(base64.b64encode(pcm16_to_ulaw(little)).decode())


def test_l16_8k_agent_audio_is_mulaw_to_big_endian() -> None:
    stream = started(encoding="L16", sample_rate=8000)
    mulaw = bytes(range(0, 256, 7))
    frame = json.loads(stream.audio(mulaw))
    assert base64.b64decode(frame["media"]["payload"]) == swap(ulaw_to_pcm16(mulaw))


def test_l16_16k_is_resampled_both_ways_at_the_right_lengths() -> None:
    stream = started(encoding="L16", sample_rate=16000)
    start_event = StreamStarted(CALL, STREAM, USER, {}, AudioFormat("l16", 16000, big_endian=True))
    assert stream.start is not None
    # agent: 20 ms of mu-law (160 bytes) is 20 ms of L16 16 kHz (640 bytes) from the first chunk
    for _ in range(3):
        payload = json.loads(stream.audio(b"\x10" * 160))["media"]["payload"]
        assert len(base64.b64decode(payload)) == 640
    # caller: 20 ms of L16 16 kHz becomes 20 ms of mu-law once the resampler has started
    lengths = []
    for n in range(1, 5):
        event = stream.decode(
            encode_media(
                STREAM,
                base64.b64encode(b"\x01\x00" * 320).decode(),
                chunk=n,
                timestamp=20 * n,
                sequence_number=n,
            )
        )
        assert isinstance(event, CallerAudio)
        lengths.append(len(base64.b64decode(event.payload)))
    assert lengths[1:] == [160, 160, 160] and 0 < lengths[0] <= 160
    assert (
        TelnyxStream().decode(encode_start(STREAM, CALL, USER, encoding="L16", sample_rate=16000))
        == start_event
    )


def test_outbound_format_can_differ_from_the_inbound_one() -> None:
    stream = TelnyxStream(outbound=AudioFormat("l16", 8000, big_endian=True))
    stream.decode(encode_start(STREAM, CALL, USER))  # PCMU in
    assert stream.decode(DOC_MEDIA) == CallerAudio("no+JhoaJjpzS")  # copy-free in
    payload = json.loads(stream.audio(b"\xff\x00"))["media"]["payload"]
    assert base64.b64decode(payload) == swap(ulaw_to_pcm16(b"\xff\x00"))


def test_odd_l16_payload_is_refused_and_leaves_the_resampler_alone() -> None:
    stream = started(encoding="L16", sample_rate=16000)
    before = snapshot(stream)
    with pytest.raises(RemoteProtocolError, match="whole 16-bit samples"):
        stream.decode(
            encode_media(
                STREAM,
                base64.b64encode(b"\x00" * 3).decode(),
                chunk=1,
                timestamp=0,
                sequence_number=1,
            )
        )
    assert snapshot(stream) == before


@pytest.mark.parametrize(
    ("codec", "rate", "expected"),
    [
        ("PCMU", 8000, MULAW_8K),
        ("L16", 8000, AudioFormat("l16", 8000, big_endian=True)),
        ("L16", 16000, AudioFormat("l16", 16000, big_endian=True)),
    ],
)
def test_audio_formats(codec: str, rate: int, expected: AudioFormat) -> None:
    assert audio_format(codec, rate) == expected


@pytest.mark.parametrize(
    ("codec", "rate"), [("PCMU", 16000), ("PCMA", 8000), ("L16", 24000), ("G722", 16000)]
)
def test_unsupported_formats(codec: str, rate: int) -> None:
    with pytest.raises(ValueError, match="not supported"):
        audio_format(codec, rate)
    with pytest.raises(SettingsError, match="not supported"):
        TelnyxSettings(codec=codec, sample_rate=rate)
    with pytest.raises(RemoteProtocolError, match=r"start\.media_format"):
        TelnyxStream().decode(encode_start(STREAM, CALL, USER, encoding=codec, sample_rate=rate))


# --------------------------------------------------------------------------------- out: table


def test_outbound_frames_have_telnyx_shape() -> None:
    stream = started()
    assert json.loads(stream.audio(b"\x00\xff\x7f")) == {
        "event": "media",
        "media": {"payload": base64.b64encode(b"\x00\xff\x7f").decode()},
    }
    assert json.loads(stream.mark("m1")) == {"event": "mark", "mark": {"name": "m1"}}
    assert json.loads(stream.clear()) == {"event": "clear"}


@pytest.mark.parametrize("setup", ["fresh", "connected"])
@pytest.mark.parametrize("command", ["audio", "mark", "clear"])
def test_outbound_before_start_is_a_local_error(setup: str, command: str) -> None:
    stream = SETUPS[setup]()
    with pytest.raises(LocalProtocolError, match="before start"):
        if command == "audio":
            stream.audio(b"\xff")
        elif command == "mark":
            stream.mark("x")
        else:
            stream.clear()


def test_outbound_after_stop_is_allowed() -> None:
    stream = stopped()
    assert json.loads(stream.clear()) == {"event": "clear"}
    assert json.loads(stream.audio(b"\xff"))["event"] == "media"


@FUZZ
@given(name=st.text())
def test_outbound_mark_names_cannot_change_the_frame(name: str) -> None:
    assert json.loads(started().mark(name)) == {"event": "mark", "mark": {"name": name}}


@FUZZ
@given(audio=st.binary(max_size=1000))
def test_outbound_media_round_trips(audio: bytes) -> None:
    frame = json.loads(started().audio(audio))
    assert frame == {"event": "media", "media": {"payload": base64.b64encode(audio).decode()}}


def test_capabilities() -> None:
    assert TelnyxStream().capabilities == Capabilities(
        marks=True, echoes_cleared_marks=True, sends_stop=True, binary_audio=False
    )


def test_spec() -> None:
    assert (SPEC.name, SPEC.webhook, SPEC.media_path, SPEC.webhook_path) == (
        "telnyx",
        "voice",
        "/telnyx/media",
        "/telnyx/voice",
    )
    assert isinstance(SPEC.codec(), TelnyxStream) and SPEC.settings is TelnyxSettings
    assert SPEC.key_variables == ("TELNYX_API_KEY",)


def test_settings_keep_secrets_out_of_repr() -> None:
    own = TelnyxSettings(api_key="KEYsecret1", stream_token="tok-secret-2")
    assert "secret" not in repr(own)


def test_settings_take_the_public_key_raw_der_or_pem() -> None:
    # Mission Control and the docs show the key's DER SubjectPublicKeyInfo (MCowBQYDK2VwAyEA...);
    # the raw 32 bytes and PEM are the same key: all three give the same 32 bytes.
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    der = public.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode()
    assert base64.b64encode(der).decode().startswith("MCowBQYDK2VwAyEA")
    for form in (base64.b64encode(raw).decode(), base64.b64encode(der).decode(), pem):
        assert TelnyxSettings(public_key=form).public_key_bytes == raw


def _ec_der() -> str:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    public = generate_private_key(SECP256R1()).public_key()
    return base64.b64encode(
        public.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    ).decode()


@pytest.mark.parametrize(
    "key",
    [
        "not base64!",
        base64.b64encode(b"x" * 31).decode(),
        base64.b64encode(b"x" * 44).decode(),  # 44 bytes, not DER
        _ec_der(),  # DER, but not an Ed25519 key
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----",
    ],
)
def test_settings_refuse_a_bad_public_key(key: str) -> None:
    with pytest.raises(SettingsError, match="telnyx-public-key") as info:
        TelnyxSettings(public_key=key)
    assert key not in str(info.value)


# ------------------------------------------------------------------------------ bad input table


def frame_of(**fields: Any) -> str:
    return json.dumps(fields)


def start_with(**changes: Any) -> str:
    frame = json.loads(encode_start(STREAM, CALL, USER))
    for key, value in changes.items():
        target = frame["start"]
        if key.startswith("fmt_"):
            target, key = target["media_format"], key[4:]
        elif key.startswith("top_"):
            target, key = frame, key[4:]
        if value is DROP:
            del target[key]
        else:
            target[key] = value
    return json.dumps(frame)


def media_with(**changes: Any) -> str:
    frame = json.loads(encode_media(STREAM, "AAAA", chunk=1, timestamp=0, sequence_number=2))
    for key, value in changes.items():
        if value is DROP:
            del frame["media"][key]
        else:
            frame["media"][key] = value
    return json.dumps(frame)


DROP = object()
BIG = TelnyxStream.MAX_FRAME + 1

BAD = [
    pytest.param("fresh", "x" * BIG, "exceeds MAX_FRAME", id="oversized-text"),
    pytest.param("started", b" " * BIG, "exceeds MAX_FRAME", id="oversized-bytes"),
    pytest.param("fresh", b'{"event":"connected","x":"\xff"}', "not valid UTF-8", id="bad-utf8"),
    pytest.param("fresh", '{"event": ', "malformed JSON", id="truncated-json"),
    pytest.param("fresh", "", "malformed JSON", id="empty"),
    pytest.param("fresh", '{"event":"connected","v":NaN}', "malformed JSON", id="nan"),
    pytest.param("fresh", "[]", "must be a JSON object, got an array", id="array"),
    pytest.param("fresh", "{}", "no 'event' field", id="no-event"),
    pytest.param("fresh", '{"event":5}', "event must be a string, got 5", id="event-int"),
    pytest.param("started", encode_connected(), "connected after start", id="connected-late"),
    pytest.param("connected", encode_connected(), "duplicate connected", id="connected-twice"),
    pytest.param(
        "fresh",
        '{"event":"connected","version":1}',
        "version must be a string",
        id="version-int",
    ),
    pytest.param("started", encode_start(STREAM, CALL, USER), "duplicate start", id="start-twice"),
    pytest.param("stopped", DOC_MEDIA, "frame after stop", id="after-stop"),
    pytest.param("fresh", DOC_MEDIA, "media before start", id="media-early"),
    pytest.param("connected", DOC_MARK, "mark before start", id="mark-early"),
    pytest.param("fresh", DOC_DTMF, "dtmf before start", id="dtmf-early"),
    pytest.param("fresh", DOC_STOP, "stop before start", id="stop-early"),
    pytest.param(
        "fresh", start_with(top_stream_id=DROP), "^stream_id is missing", id="no-stream-id"
    ),
    pytest.param("fresh", start_with(top_stream_id=""), "stream_id is empty", id="empty-stream-id"),
    pytest.param(
        "fresh", start_with(top_stream_id=7), "stream_id must be a string", id="stream-id-int"
    ),
    pytest.param("fresh", start_with(top_start=[]), "start must be an object", id="start-array"),
    pytest.param(
        "fresh", start_with(call_control_id=DROP), "call_control_id is missing", id="no-call"
    ),
    pytest.param(
        "fresh", start_with(call_control_id=""), "call_control_id is empty", id="empty-call"
    ),
    pytest.param(
        "fresh", start_with(call_control_id=None), "must be a string, got null", id="call-null"
    ),
    pytest.param("fresh", start_with(user_id=5), "start.user_id must be a string", id="user-int"),
    pytest.param("fresh", start_with(media_format=DROP), "media_format is missing", id="no-format"),
    pytest.param("fresh", start_with(fmt_encoding=DROP), "encoding is missing", id="no-encoding"),
    pytest.param("fresh", start_with(fmt_sample_rate=DROP), "sample_rate is missing", id="no-rate"),
    pytest.param("fresh", start_with(fmt_sample_rate="8k"), "sample_rate must be", id="rate-str"),
    pytest.param("fresh", start_with(fmt_sample_rate=True), "sample_rate must be", id="rate-bool"),
    pytest.param("fresh", start_with(fmt_channels=2), "channels must be 1, got 2", id="stereo"),
    pytest.param(
        "fresh", start_with(fmt_encoding="OPUS"), "'OPUS' at 8000 Hz is not supported", id="opus"
    ),
    pytest.param(
        "fresh",
        start_with(custom_parameters={"n": 1}),
        r"custom_parameters\['n'\] must be a string",
        id="param-int",
    ),
    pytest.param(
        "fresh", start_with(custom_parameters=[1]), "must hold objects", id="param-list-int"
    ),
    pytest.param(
        "fresh",
        start_with(custom_parameters=[{"name": "a"}]),
        r"\[\].value is missing",
        id="pair-no-value",
    ),
    pytest.param(
        "fresh", start_with(custom_parameters="x"), "an object or an array", id="params-str"
    ),
    pytest.param("started", media_with(payload=DROP), "media.payload is missing", id="no-payload"),
    pytest.param("started", media_with(payload=""), "empty media payload", id="empty-payload"),
    pytest.param("started", media_with(payload="abc!"), "not valid base64", id="b64-char"),
    pytest.param("started", media_with(payload="AAA"), "not valid base64", id="b64-padding"),
    pytest.param(
        "started", media_with(chunk="-1"), "media.chunk must be a non-negative", id="chunk-neg"
    ),
    pytest.param("started", media_with(chunk=str(2**63)), "media.chunk must be", id="chunk-2**63"),
    pytest.param("started", media_with(timestamp="x"), "media.timestamp must be", id="ts-str"),
    pytest.param("started", media_with(track=1), "media.track must be a string", id="track-int"),
    pytest.param(
        "started", frame_of(event="media", media="AAAA"), "media must be an object", id="media-str"
    ),
    pytest.param(
        "started",
        frame_of(event="media", stream_id="other", media={"payload": "AAAA"}),
        "does not match the stream",
        id="other-stream",
    ),
    pytest.param("started", frame_of(event="mark"), "^mark is missing$", id="no-mark"),
    pytest.param(
        "started",
        frame_of(event="mark", mark={"name": 1}),
        "mark.name must be a string",
        id="mark-int",
    ),
    pytest.param(
        "started", encode_dtmf(STREAM, "12", 3), "dtmf.digit must be one of", id="digit-two"
    ),
    pytest.param("started", encode_dtmf(STREAM, "E", 3), "dtmf.digit must be one of", id="digit-e"),
    pytest.param(
        "started", frame_of(event="stop", stop=[]), "stop must be an object", id="stop-array"
    ),
    pytest.param(
        "started", frame_of(event="stop", stream_id="other"), "does not match", id="stop-other"
    ),
    pytest.param(
        "started",
        frame_of(event="error", payload="x"),
        "error.payload must be an object",
        id="error-str",
    ),
]


@pytest.mark.parametrize(("setup", "frame", "match"), BAD)
def test_rejects_bad_input(setup: str, frame: str | bytes, match: str) -> None:
    stream = SETUPS[setup]()
    before = snapshot(stream)
    with pytest.raises(RemoteProtocolError, match=match):
        stream.decode(frame)
    assert snapshot(stream) == before


def test_rejected_start_leaves_the_stream_startable() -> None:
    stream = TelnyxStream()
    with pytest.raises(RemoteProtocolError):
        stream.decode(start_with(fmt_encoding="PCMA"))
    assert isinstance(stream.decode(DOC_START), StreamStarted)


def test_non_text_frame_is_a_caller_bug() -> None:
    with pytest.raises(TypeError):
        TelnyxStream().decode(5)  # type: ignore[arg-type]


def test_safety_net_turns_decoder_bugs_into_protocol_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: TelnyxStream, message: dict[str, object]) -> None:
        raise KeyError("oops")

    from voxbridge.carriers import telnyx

    monkeypatch.setitem(telnyx._DECODERS, "mark", broken)
    with pytest.raises(RemoteProtocolError, match="unexpected error decoding mark frame"):
        started().decode(DOC_MARK)


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    frame = encode_mark_echo(STREAM, "", 1)
    padded = frame[:-1] + " " * (TelnyxStream.MAX_FRAME - len(frame)) + "}"
    assert len(padded) == TelnyxStream.MAX_FRAME
    assert started().decode(padded) == MarkPlayed("")


# ----------------------------------------------------------------------------------- property

EVENTS = ["connected", "start", "media", "mark", "dtmf", "error", "stop"]


def feed(stream: TelnyxStream, frame: str | bytes) -> object:
    """Decode ``frame``: only a RemoteProtocolError raised by a real check may come out, and
    then the state is as it was."""
    before = snapshot(stream)
    try:
        event = stream.decode(frame)
    except RemoteProtocolError as exc:
        assert not str(exc).startswith("unexpected error"), f"decoder bug hidden: {exc!r}"
        assert snapshot(stream) == before
        return None
    if isinstance(event, StreamStarted):
        assert stream.start is event.details and event.stream_id and event.call_id
        assert all(isinstance(v, str) for v in event.custom_parameters.values())
    elif isinstance(event, CallerAudio):
        assert event.payload and base64.b64decode(event.payload, validate=True)
    elif isinstance(event, Dtmf):
        assert event.digit in "0123456789*#ABCD" and len(event.digit) == 1
    elif isinstance(event, StreamStopped):
        assert stream.stopped
    else:
        assert event is None or isinstance(event, MarkPlayed)
    if event is not None:
        assert stream.started
    return event


@FUZZ
@given(frame=st.one_of(st.text(), st.binary()), setup=st.sampled_from(sorted(SETUPS)))
def test_fuzz_raw_frames(frame: str | bytes, setup: str) -> None:
    feed(SETUPS[setup](), frame)


json_values = carrierkit.json_values(
    "", "1", "-1", "8000", "AAAA", "AA==", "PCMU", "L16", STREAM, "#", "\u00b2"
)
fields = carrierkit.fields_of(json_values)


media_format = fields(
    encoding=st.sampled_from(["PCMU", "L16", "PCMA"]),
    sample_rate=st.sampled_from([8000, 16000, "8000"]),
    channels=st.just(1),
)
bodies = {
    "start": fields(
        call_control_id=st.sampled_from([CALL, ""]),
        user_id=st.just(USER),
        client_state=st.one_of(st.none(), st.just("e30=")),
        media_format=media_format,
        custom_parameters=st.one_of(
            st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
            st.lists(fields(name=st.text(max_size=5), value=st.text(max_size=5)), max_size=3),
        ),
    ),
    "media": fields(
        track=st.sampled_from(["inbound", "outbound"]),
        chunk=st.integers(0, 10**6).map(str),
        timestamp=st.integers(0, 10**6),
        payload=st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
    ),
    "mark": fields(name=st.text(max_size=8)),
    "dtmf": fields(digit=st.sampled_from(list("0123456789*#ABCDE"))),
    "stop": fields(call_control_id=st.just(CALL)),
    "payload": fields(code=st.integers(), title=st.text(max_size=8), detail=st.text(max_size=8)),
}


@st.composite
def structured(draw: st.DrawFn) -> dict[str, Any]:
    """An object with an "event" key (mostly a real name) and the matching nested body."""
    event = draw(st.sampled_from([*EVENTS, *EVENTS, "clear", "Media", "", "xyz"]))
    frame = {"event": event} | draw(
        fields(
            stream_id=st.sampled_from([STREAM, STREAM, "other", ""]),
            sequence_number=st.integers(0, 99).map(str),
        )
    )
    body = "payload" if event == "error" else event
    if body in bodies:
        frame |= draw(fields(**{body: bodies[body]}))
    elif event:
        frame |= draw(fields(media=bodies["media"]))
    return frame


@FUZZ
@given(
    value=st.one_of(json_values, structured(), structured()),
    setup=st.sampled_from(["started", "started", "fresh", "connected"]),
    l16=st.booleans(),
)
def test_fuzz_json_values(value: Any, setup: str, l16: bool) -> None:
    stream = (
        started(encoding="L16", sample_rate=16000)
        if l16 and setup == "started"
        else SETUPS[setup]()
    )
    event = feed(stream, json.dumps(value))
    if event is not None:
        assert isinstance(value, dict) and value["event"] in EVENTS


@FUZZ
@given(
    audio=st.binary(min_size=1, max_size=400),
    chunk=st.integers(0, 2**63 - 1),
    timestamp=st.integers(0, 2**63 - 1),
    as_bytes=st.booleans(),
)
def test_valid_pcmu_media_is_forwarded_verbatim(
    audio: bytes, chunk: int, timestamp: int, as_bytes: bool
) -> None:
    payload = base64.b64encode(audio).decode("ascii")
    frame = encode_media(STREAM, payload, chunk=chunk, timestamp=timestamp, sequence_number=1)
    event = started().decode(frame.encode() if as_bytes else frame)
    assert event == CallerAudio(payload)
