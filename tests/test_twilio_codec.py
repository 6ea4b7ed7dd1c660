"""Tests of the sans-IO Twilio Media Streams codec (voxbridge.carriers.twilio)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxbridge.audio import b64_decode
from voxbridge.carriers import twilio
from voxbridge.carriers.twilio import (
    Connected,
    Dtmf,
    LocalProtocolError,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    TwilioEvent,
    TwilioStream,
    encode_connected,
    encode_dtmf,
    encode_inbound_media,
    encode_mark_echo,
    encode_start,
    encode_stop,
)
from voxbridge.errors import RemoteProtocolError

SID = "MZ" + "0123456789abcdef" * 2
CALL = "CA" + "fedcba9876543210" * 2
ACCOUNT = "AC" + "00112233445566778899aabbccddeeff"
MULAW = MediaFormat("audio/x-mulaw", 8000, 1)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def started(sid: str = SID) -> TwilioStream:
    stream = TwilioStream()
    stream.receive(encode_connected())
    stream.receive(encode_start(sid, CALL, ACCOUNT))
    return stream


def stopped() -> TwilioStream:
    stream = started()
    stream.receive(encode_stop(SID, CALL, ACCOUNT, 9))
    return stream


def connected() -> TwilioStream:
    stream = TwilioStream()
    stream.receive(encode_connected())
    return stream


def snapshot(stream: TwilioStream) -> tuple[object, ...]:
    return (stream.started, stream.stopped, stream.stream_sid, stream.call_sid, stream.start)


# ------------------------------------------------------------------ documented frames (A.2)

# The examples of Twilio's "Media Streams - WebSocket Messages" reference. The media example's
# payload there is elided
# ("no+JhoaJjpzS..."); the "..." is dropped here so that it is valid base64.
DOC_CONNECTED = '{ "event": "connected", "protocol": "Call", "version": "1.0.0" }'
DOC_START = """{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "tracks": ["inbound"],
    "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
    "customParameters": { "FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob" }
  },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"""
DOC_MEDIA = """{
  "event": "media",
  "sequenceNumber": "4",
  "media": { "track": "inbound", "chunk": "2", "timestamp": "5", "payload": "no+JhoaJjpzS" },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"""
DOC_DTMF = """{ "event": "dtmf", "streamSid": "MZ...", "sequenceNumber": "5",
  "dtmf": { "track": "inbound_track", "digit": "1" } }"""
DOC_MARK = '{ "event": "mark", "sequenceNumber": "4", "streamSid": "MZ...", "mark": { "name": "my label" } }'
DOC_STOP = """{ "event": "stop", "sequenceNumber": "5",
  "stop": { "accountSid": "AC...", "callSid": "CA..." }, "streamSid": "MZ..." }"""
DOC_SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"


@pytest.mark.parametrize(
    ("setup_sid", "frame", "expected"),
    [
        pytest.param(None, DOC_CONNECTED, Connected("Call", "1.0.0"), id="connected"),
        pytest.param(
            None,
            DOC_START,
            Start(
                stream_sid=DOC_SID,
                call_sid="CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                account_sid="ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                tracks=("inbound",),
                media_format=MULAW,
                custom_parameters={"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
                sequence_number=1,
            ),
            id="start",
        ),
        pytest.param(DOC_SID, DOC_MEDIA, Media("inbound", 2, 5, "no+JhoaJjpzS"), id="media"),
        pytest.param("MZ...", DOC_DTMF, Dtmf(digit="1", track="inbound_track"), id="dtmf"),
        pytest.param("MZ...", DOC_MARK, Mark("my label"), id="mark"),
        pytest.param("MZ...", DOC_STOP, Stop(account_sid="AC...", call_sid="CA..."), id="stop"),
    ],
)
def test_decodes_documented_frames(
    setup_sid: str | None, frame: str, expected: TwilioEvent
) -> None:
    stream = TwilioStream() if setup_sid is None else started(setup_sid)
    event = stream.receive(frame)
    assert event == expected
    assert type(event) is type(expected)
    # bytes frames decode the same way
    again = TwilioStream() if setup_sid is None else started(setup_sid)
    assert again.receive(frame.encode("utf-8")) == expected


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(encode_connected(), Connected("Call", "1.0.0"), id="connected"),
        pytest.param(
            encode_inbound_media(SID, "AAEC/w==", chunk=7, timestamp=140, sequence_number=8),
            Media("inbound", 7, 140, "AAEC/w=="),
            id="media",
        ),
        pytest.param(
            encode_inbound_media(SID, "//8=", chunk=0, timestamp=0, sequence_number=2, track="x"),
            Media("x", 0, 0, "//8="),
            id="media-track",
        ),
        pytest.param(encode_dtmf(SID, "#", 3), Dtmf("#", "inbound_track"), id="dtmf"),
        pytest.param(
            encode_mark_echo(SID, 'say "hi" \u00e9', 4), Mark('say "hi" \u00e9'), id="mark"
        ),
        pytest.param(encode_stop(SID, CALL, ACCOUNT, 5), Stop(ACCOUNT, CALL), id="stop"),
    ],
)
def test_encoders_round_trip(frame: str, expected: TwilioEvent) -> None:
    stream = TwilioStream() if isinstance(expected, Connected) else started()
    assert stream.receive(frame) == expected


def test_encode_start_round_trip_and_state() -> None:
    stream = TwilioStream()
    assert (stream.started, stream.stopped, stream.start) == (False, False, None)
    assert (stream.stream_sid, stream.call_sid) == (None, None)
    frame = encode_start(
        SID,
        CALL,
        ACCOUNT,
        sequence_number=12,
        tracks=("inbound", "outbound"),
        custom_parameters={"call_id": "abc123", "k": ""},
    )
    event = stream.receive(frame)
    assert event == Start(
        SID, CALL, ACCOUNT, ("inbound", "outbound"), MULAW, {"call_id": "abc123", "k": ""}, 12
    )
    assert stream.start is event
    assert (stream.started, stream.stopped, stream.stream_sid, stream.call_sid) == (
        True,
        False,
        SID,
        CALL,
    )
    stream.receive(encode_stop(SID, CALL, ACCOUNT, 13))
    assert (stream.started, stream.stopped, stream.stream_sid) == (True, True, SID)


def test_start_optional_fields_default() -> None:
    frame = json.dumps(
        {
            "event": "start",
            "start": {
                "streamSid": SID,
                "callSid": CALL,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )
    event = TwilioStream().receive(frame)
    assert event == Start(SID, CALL, "", (), MULAW, {}, None)


def test_start_without_connected_and_integer_counters() -> None:
    stream = TwilioStream()
    stream.receive(encode_start(SID, CALL, ACCOUNT))
    frame = json.dumps(
        {
            "event": "media",
            "media": {"track": "inbound", "chunk": 3, "timestamp": 60, "payload": "AA=="},
        }
    )
    assert stream.receive(frame) == Media("inbound", 3, 60, "AA==")


def test_stop_fields_may_be_missing() -> None:
    assert started().receive('{"event":"stop"}') == Stop("", "")
    assert started().receive('{"event":"stop","stop":{"callSid":"CA1"}}') == Stop("", "CA1")


def test_start_custom_parameters_are_copied_and_start_is_hashable() -> None:
    params = {"a": "1"}
    event = Start(SID, CALL, ACCOUNT, ("inbound",), MULAW, params, 1)
    params["a"] = "changed"
    assert event.custom_parameters == {"a": "1"}
    assert hash(event) == hash(Start(SID, CALL, ACCOUNT, ("inbound",), MULAW, {"b": "2"}, 1))
    with pytest.raises(AttributeError):
        event.stream_sid = "x"  # type: ignore[misc]


def test_media_audio_decodes_payload() -> None:
    assert (
        Media("inbound", 1, 0, base64.b64encode(b"\xff\x00\x7f").decode()).audio == b"\xff\x00\x7f"
    )


# -------------------------------------------------------------------------------- bad input


def frame_of(**top: Any) -> str:
    return json.dumps(top)


def start_frame(**changes: Any) -> str:
    """A valid start frame with fields of ``start`` (or of ``mediaFormat``, prefixed ``fmt_``)
    replaced, or dropped when the value is ``DROP``."""
    body: dict[str, Any] = json.loads(encode_start(SID, CALL, ACCOUNT))
    for key, value in changes.items():
        target, name = (
            (body["start"]["mediaFormat"], key[4:])
            if key.startswith("fmt_")
            else (body["start"], key)
        )
        if value is DROP:
            del target[name]
        else:
            target[name] = value
    return json.dumps(body)


def media_frame(**media: Any) -> str:
    body: dict[str, Any] = {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "AAAA"}
    for key, value in media.items():
        if value is DROP:
            del body[key]
        else:
            body[key] = value
    return json.dumps({"event": "media", "streamSid": SID, "media": body})


DROP = object()
BIG = TwilioStream.MAX_FRAME + 1
FRESH, CONNECTED, STARTED, STOPPED = "fresh", "connected", "started", "stopped"
SETUPS: dict[str, Callable[[], TwilioStream]] = {
    FRESH: TwilioStream,
    CONNECTED: connected,
    STARTED: started,
    STOPPED: stopped,
}

BAD: list[Any] = [
    # framing
    pytest.param(FRESH, "x" * BIG, "exceeds MAX_FRAME", id="oversized-text"),
    pytest.param(STARTED, b" " * BIG, "exceeds MAX_FRAME", id="oversized-bytes"),
    pytest.param(
        STARTED, media_frame(payload="A" * BIG), "exceeds MAX_FRAME", id="oversized-media"
    ),
    pytest.param(FRESH, b'{"event":"connected","x":"\xff\xfe"}', "not valid UTF-8", id="bad-utf8"),
    pytest.param(FRESH, b"\xc0\x80", "not valid UTF-8", id="overlong-utf8"),
    # JSON
    pytest.param(FRESH, '{"event": ', "malformed JSON", id="truncated-json"),
    pytest.param(FRESH, '{"event":"connected"} x', "malformed JSON", id="trailing-garbage"),
    pytest.param(FRESH, "", "malformed JSON", id="empty-frame"),
    pytest.param(FRESH, '{"event":"connected","v":NaN}', "malformed JSON", id="nan"),
    pytest.param(FRESH, '{"event":"connected","v":-Infinity}', "malformed JSON", id="infinity"),
    pytest.param(FRESH, '{"event":"connected","v":1e999}', "malformed JSON", id="overflow"),
    pytest.param(FRESH, '{"event":"connected","v":"\\ud800"}', "malformed JSON", id="surrogate"),
    pytest.param(FRESH, "[" * 50_000, "malformed JSON: depth limit", id="deep-nesting"),
    pytest.param(STARTED, '{"a":' + "1" * 5000 + "}", "malformed JSON", id="huge-int"),
    pytest.param(FRESH, "[]", "must be a JSON object, got an array", id="array"),
    pytest.param(FRESH, '"x"', "must be a JSON object, got 'x'", id="string"),
    pytest.param(FRESH, "3", "must be a JSON object, got 3", id="number"),
    pytest.param(FRESH, "null", "must be a JSON object, got null", id="null"),
    # event discriminator
    pytest.param(FRESH, '{"event":"xyz"}', "unknown event 'xyz'", id="unknown-event"),
    pytest.param(
        STARTED, frame_of(event="clear", streamSid=SID), "unknown event 'clear'", id="clear"
    ),
    pytest.param(FRESH, '{"protocol":"Call"}', "no 'event' field", id="missing-event"),
    pytest.param(FRESH, '{"event":3}', "event must be a string, got 3", id="event-not-string"),
    pytest.param(FRESH, '{"event":["start"]}', "got an array", id="event-array"),
    # order
    pytest.param(FRESH, media_frame(), "media before start", id="media-before-start"),
    pytest.param(CONNECTED, encode_mark_echo(SID, "m", 2), "mark before start", id="mark-before"),
    pytest.param(FRESH, encode_dtmf(SID, "1", 2), "dtmf before start", id="dtmf-before-start"),
    pytest.param(FRESH, encode_stop(SID, CALL, ACCOUNT, 2), "stop before start", id="stop-before"),
    pytest.param(STARTED, encode_start(SID, CALL, ACCOUNT), "duplicate start", id="second-start"),
    pytest.param(STARTED, encode_connected(), "connected after start", id="connected-after-start"),
    pytest.param(CONNECTED, encode_connected(), "duplicate connected", id="second-connected"),
    pytest.param(STOPPED, media_frame(), "frame after stop", id="media-after-stop"),
    pytest.param(
        STOPPED, encode_stop(SID, CALL, ACCOUNT, 9), "frame after stop", id="stop-after-stop"
    ),
    pytest.param(STOPPED, "garbage", "frame after stop", id="garbage-after-stop"),
    # start fields
    pytest.param(FRESH, frame_of(event="start"), "^start is missing$", id="start-object-missing"),
    pytest.param(
        FRESH, frame_of(event="start", start=[]), "start must be an object", id="start-array"
    ),
    pytest.param(
        FRESH, start_frame(streamSid=DROP), "start.streamSid is missing", id="no-streamSid"
    ),
    pytest.param(
        FRESH, start_frame(streamSid=7), "start.streamSid must be a string, got 7", id="sid-int"
    ),
    pytest.param(FRESH, start_frame(streamSid=""), "start.streamSid is empty", id="sid-empty"),
    pytest.param(FRESH, start_frame(callSid=DROP), "start.callSid is missing", id="no-callSid"),
    pytest.param(
        FRESH, start_frame(callSid=None), "callSid must be a string, got null", id="callSid-null"
    ),
    pytest.param(
        FRESH, start_frame(accountSid=1), "start.accountSid must be a string", id="acct-int"
    ),
    pytest.param(
        FRESH, start_frame(mediaFormat=DROP), "start.mediaFormat is missing", id="no-format"
    ),
    pytest.param(
        FRESH, start_frame(mediaFormat="mulaw"), "start.mediaFormat must be an object", id="fmt-str"
    ),
    pytest.param(
        FRESH,
        start_frame(fmt_encoding="audio/x-l16"),
        "start.mediaFormat.encoding must be 'audio/x-mulaw', got 'audio/x-l16'",
        id="wrong-encoding",
    ),
    pytest.param(FRESH, start_frame(fmt_encoding=DROP), "encoding is missing", id="no-encoding"),
    pytest.param(
        FRESH,
        start_frame(fmt_sampleRate=16000),
        "start.mediaFormat.sampleRate must be 8000, got 16000",
        id="wrong-sampleRate",
    ),
    pytest.param(FRESH, start_frame(fmt_sampleRate="8000"), "got '8000'", id="sampleRate-str"),
    pytest.param(FRESH, start_frame(fmt_sampleRate=8000.0), "got 8000.0", id="sampleRate-float"),
    pytest.param(
        FRESH, start_frame(fmt_sampleRate=DROP), "sampleRate is missing", id="no-sampleRate"
    ),
    pytest.param(
        FRESH,
        start_frame(fmt_channels=2),
        "start.mediaFormat.channels must be 1, got 2",
        id="stereo",
    ),
    pytest.param(
        FRESH, start_frame(fmt_channels=True), "channels must be 1, got true", id="channels-bool"
    ),
    pytest.param(
        FRESH, start_frame(tracks="inbound"), "start.tracks must be an array", id="tracks-str"
    ),
    pytest.param(
        FRESH, start_frame(tracks=["inbound", 1]), "tracks must hold strings", id="tracks-int"
    ),
    pytest.param(
        FRESH,
        start_frame(customParameters={"n": 1}),
        r"start.customParameters\['n'\] must be a string, got 1",
        id="param-int",
    ),
    pytest.param(
        FRESH,
        start_frame(customParameters=[]),
        "customParameters must be an object",
        id="params-arr",
    ),
    pytest.param(
        FRESH,
        json.dumps({**json.loads(encode_start(SID, CALL, ACCOUNT)), "sequenceNumber": "x"}),
        "sequenceNumber must be a non-negative integer, got 'x'",
        id="bad-sequenceNumber",
    ),
    pytest.param(
        FRESH,
        json.dumps({**json.loads(encode_start(SID, CALL, ACCOUNT)), "streamSid": "MZother"}),
        "does not match start.streamSid",
        id="start-sid-mismatch",
    ),
    # media fields
    pytest.param(
        STARTED, frame_of(event="media", streamSid=SID), "^media is missing$", id="no-media-obj"
    ),
    pytest.param(
        STARTED, frame_of(event="media", media="AAAA"), "media must be an object", id="media-str"
    ),
    pytest.param(STARTED, media_frame(payload=DROP), "media.payload is missing", id="no-payload"),
    pytest.param(
        STARTED, media_frame(payload=5), "media.payload must be a string", id="payload-int"
    ),
    pytest.param(STARTED, media_frame(payload=""), "empty media payload", id="empty-payload"),
    pytest.param(
        STARTED, media_frame(payload="abc!"), "media.payload is not valid base64", id="b64-char"
    ),
    pytest.param(
        STARTED, media_frame(payload="AAA"), "media.payload is not valid base64", id="b64-padding"
    ),
    pytest.param(STARTED, media_frame(payload="AAAA\n"), "not valid base64", id="b64-newline"),
    pytest.param(STARTED, media_frame(payload="AA==AA=="), "not valid base64", id="b64-after-pad"),
    pytest.param(STARTED, media_frame(payload="=AAA"), "not valid base64", id="b64-leading-pad"),
    pytest.param(
        STARTED,
        media_frame(payload="\u00ff\u00ff\u00ff\u00ff"),
        "not valid base64",
        id="b64-nonascii",
    ),
    pytest.param(
        STARTED,
        media_frame(chunk="-1"),
        "media.chunk must be a non-negative integer, got '-1'",
        id="chunk-neg-str",
    ),
    pytest.param(
        STARTED,
        media_frame(chunk=-1),
        "media.chunk must be a non-negative integer, got -1",
        id="chunk-neg-int",
    ),
    pytest.param(STARTED, media_frame(chunk="1.5"), "media.chunk must be", id="chunk-decimal"),
    pytest.param(STARTED, media_frame(chunk=1.0), "media.chunk must be", id="chunk-float"),
    pytest.param(
        STARTED, media_frame(chunk=True), "media.chunk must be .*, got true", id="chunk-bool"
    ),
    pytest.param(
        STARTED, media_frame(chunk="\u00b2"), "media.chunk must be", id="chunk-unicode-digit"
    ),
    pytest.param(STARTED, media_frame(chunk=""), "media.chunk must be", id="chunk-empty"),
    pytest.param(STARTED, media_frame(chunk="9" * 20), "media.chunk must be", id="chunk-huge-str"),
    pytest.param(
        STARTED, media_frame(chunk=str(2**63)), "media.chunk must be", id="chunk-2**63-str"
    ),
    pytest.param(STARTED, media_frame(chunk=2**64), "media.chunk must be", id="chunk-huge-int"),
    pytest.param(STARTED, media_frame(chunk=DROP), "media.chunk is missing", id="no-chunk"),
    pytest.param(
        STARTED, media_frame(timestamp=" 5"), "media.timestamp must be", id="timestamp-space"
    ),
    pytest.param(
        STARTED, media_frame(timestamp=DROP), "media.timestamp is missing", id="no-timestamp"
    ),
    pytest.param(STARTED, media_frame(track=1), "media.track must be a string", id="track-int"),
    # mark / dtmf / stop fields
    pytest.param(
        STARTED, frame_of(event="mark", mark={}), "mark.name is missing", id="no-mark-name"
    ),
    pytest.param(
        STARTED,
        frame_of(event="mark", mark={"name": 1}),
        "mark.name must be a string",
        id="name-int",
    ),
    pytest.param(STARTED, frame_of(event="mark"), "^mark is missing$", id="no-mark-obj"),
    pytest.param(STARTED, frame_of(event="dtmf", dtmf={}), "dtmf.digit is missing", id="no-digit"),
    pytest.param(
        STARTED, encode_dtmf(SID, "E", 3), "dtmf.digit must be one of .*, got 'E'", id="digit-E"
    ),
    pytest.param(STARTED, encode_dtmf(SID, "12", 3), "dtmf.digit must be one of", id="digit-two"),
    pytest.param(STARTED, encode_dtmf(SID, "", 3), "dtmf.digit must be one of", id="digit-empty"),
    pytest.param(
        STARTED,
        frame_of(event="dtmf", dtmf={"digit": 1}),
        "dtmf.digit must be a string",
        id="digit-int",
    ),
    pytest.param(
        STARTED,
        frame_of(event="dtmf", dtmf={"digit": "1", "track": None}),
        "dtmf.track must be a string, got null",
        id="dtmf-track",
    ),
    pytest.param(
        STARTED, frame_of(event="stop", stop=[]), "stop must be an object", id="stop-array"
    ),
    pytest.param(
        STARTED,
        frame_of(event="stop", stop={"callSid": 1}),
        "stop.callSid must be a string",
        id="stop-call-int",
    ),
    pytest.param(
        STARTED,
        frame_of(event="stop", stop={"accountSid": None}),
        "stop.accountSid must be a string",
        id="stop-acct",
    ),
    # stream sid
    pytest.param(
        STARTED,
        encode_inbound_media("MZother", "AAAA", chunk=1, timestamp=0, sequence_number=2),
        "media.streamSid 'MZother' does not match",
        id="media-sid",
    ),
    pytest.param(
        STARTED,
        encode_mark_echo("MZother", "m", 2),
        "mark.streamSid 'MZother' does not match",
        id="mark-sid",
    ),
    pytest.param(
        STARTED, encode_dtmf("MZother", "1", 2), "dtmf.streamSid .* does not match", id="dtmf-sid"
    ),
    pytest.param(
        STARTED,
        encode_stop("MZother", CALL, ACCOUNT, 2),
        "stop.streamSid .* does not match",
        id="stop-sid",
    ),
    pytest.param(
        STARTED,
        frame_of(event="mark", streamSid=None, mark={"name": "m"}),
        "got null|null does not match",
        id="sid-null",
    ),
]


@pytest.mark.parametrize(("setup", "frame", "match"), BAD)
def test_rejects_bad_input(setup: str, frame: str | bytes, match: str) -> None:
    stream = SETUPS[setup]()
    before = snapshot(stream)
    with pytest.raises(RemoteProtocolError, match=match):
        stream.receive(frame)
    assert snapshot(stream) == before, "a rejected frame must leave the state unchanged"


def test_rejected_start_leaves_stream_startable() -> None:
    stream = TwilioStream()
    with pytest.raises(RemoteProtocolError):
        stream.receive(start_frame(fmt_channels=2))
    assert stream.receive(encode_start(SID, CALL, ACCOUNT)).stream_sid == SID  # type: ignore[union-attr]


def test_error_after_start_does_not_stop_stream() -> None:
    stream = started()
    with pytest.raises(RemoteProtocolError):
        stream.receive(media_frame(payload="!!"))
    assert stream.receive(media_frame()) == Media("inbound", 1, 0, "AAAA")


def test_non_text_frame_is_a_caller_bug() -> None:
    with pytest.raises(TypeError):
        TwilioStream().receive(42)  # type: ignore[arg-type]


def test_safety_net_turns_decoder_bugs_into_protocol_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(stream: TwilioStream, message: dict[str, object]) -> TwilioEvent:
        raise KeyError("oops")

    monkeypatch.setitem(twilio._DECODERS, "mark", broken)
    with pytest.raises(RemoteProtocolError, match="unexpected error decoding mark frame") as info:
        started().receive(encode_mark_echo(SID, "m", 2))
    assert isinstance(info.value.__cause__, KeyError)


def test_counters_accept_the_full_int64_range() -> None:
    top = str(2**63 - 1)
    assert started().receive(media_frame(chunk=top, timestamp="007")) == Media(
        "inbound", 2**63 - 1, 7, "AAAA"
    )


def test_frame_exactly_max_frame_is_accepted() -> None:
    frame = media_frame()
    padded = frame[:-1] + " " * (TwilioStream.MAX_FRAME - len(frame)) + "}"
    assert len(padded) == TwilioStream.MAX_FRAME
    assert isinstance(started().receive(padded), Media)


# --------------------------------------------------------------------------------- outbound


def test_outbound_frames_have_twilio_shape() -> None:
    stream = started()
    assert json.loads(stream.media(b"\x00\x01\x02\xff")) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": "AAEC/w=="},
    }
    assert json.loads(stream.mark("resp-42-chunk-7")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "resp-42-chunk-7"},
    }
    assert json.loads(stream.clear()) == {"event": "clear", "streamSid": SID}


@pytest.mark.parametrize(
    "name",
    [
        'say "hi"',
        "back\\slash",
        "caf\u00e9 \u2603 \U0001f600",
        "new\nline\t\x00",
        "\u2028",
        "\ud800",
        "",
    ],
    ids=["quotes", "backslash", "unicode", "control", "line-sep", "lone-surrogate", "empty"],
)
def test_outbound_mark_names_are_escaped(name: str) -> None:
    frame = started().mark(name)
    assert json.loads(frame) == {"event": "mark", "streamSid": SID, "mark": {"name": name}}
    echo = encode_mark_echo(SID, name, 3)
    if name == "\ud800":  # no UTF-8 text can carry it: the decoder refuses such an echo
        with pytest.raises(RemoteProtocolError, match="malformed JSON"):
            started().receive(echo)
        return
    # and it survives Twilio's echo back through the decoder
    assert started().receive(echo) == Mark(name)


def test_outbound_stream_sid_is_escaped() -> None:
    odd = 'MZ"\\\n\u00e9'
    stream = started(odd)
    for frame in (stream.media(b"\x00"), stream.mark("m"), stream.clear()):
        assert json.loads(frame)["streamSid"] == odd
    assert json.loads(stream.media(b"\xff\x7f\x00")) == {
        "event": "media",
        "streamSid": odd,
        "media": {"payload": "/38A"},
    }


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return dict(pairs)


#: Stream SIDs a start frame can carry (any non-empty text a UTF-8 frame can hold), weighted
#: towards the real shape and the ones JSON must escape.
SIDS = st.one_of(
    st.just(SID),
    st.sampled_from(['MZ"\\\n\u00e9', "MZ\u2028\u2029", "MZ</script>", "MZ\x00\x1f\x7f"]),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1),
)


@FUZZ
@given(audio=st.binary(max_size=1000), sid=SIDS)
def test_outbound_media_fuzz(audio: bytes, sid: str) -> None:
    """Any audio, under any stream SID, is exactly Twilio's media frame and round-trips."""
    frame = started(sid).media(audio)
    frame.encode("utf-8")  # sendable as a text frame
    body = json.loads(frame, object_pairs_hook=unique_keys)
    payload = base64.b64encode(audio).decode("ascii")  # the one base64 of ``audio``
    assert body == {"event": "media", "streamSid": sid, "media": {"payload": payload}}
    assert b64_decode(body["media"]["payload"]) == audio
    # the payload passes the same check as Twilio's own (inbound) media payloads
    if audio:
        inbound = encode_inbound_media(sid, payload, chunk=1, timestamp=0, sequence_number=2)
        assert started(sid).receive(inbound) == Media("inbound", 1, 0, payload)


@pytest.mark.parametrize("setup", [FRESH, CONNECTED])
@pytest.mark.parametrize(
    "send",
    [lambda s: s.media(b"\x00"), lambda s: s.mark("m"), lambda s: s.clear()],
    ids=["media", "mark", "clear"],
)
def test_outbound_before_start_is_a_local_error(
    setup: str, send: Callable[[TwilioStream], str]
) -> None:
    with pytest.raises(LocalProtocolError, match="before start") as info:
        send(SETUPS[setup]())
    assert isinstance(info.value, RuntimeError)
    assert not isinstance(info.value, RemoteProtocolError)


def test_outbound_after_stop_is_allowed() -> None:
    # A send racing the caller's stop must not crash the call as an internal error.
    assert json.loads(stopped().clear()) == {"event": "clear", "streamSid": SID}


@FUZZ
@given(name=st.text())
def test_outbound_mark_fuzz(name: str) -> None:
    assert json.loads(started().mark(name))["mark"] == {"name": name}


# --------------------------------------------------------------------------------- property

EVENTS = ["connected", "start", "media", "mark", "dtmf", "stop"]


def feed(stream: TwilioStream, frame: str | bytes) -> TwilioEvent | None:
    """Receive ``frame``; only a RemoteProtocolError raised by a real check may come out."""
    before = snapshot(stream)
    try:
        event = stream.receive(frame)
    except RemoteProtocolError as exc:
        assert not str(exc).startswith("unexpected error"), (
            f"decoder bug hidden by safety net: {exc!r}"
        )
        assert snapshot(stream) == before
        return None
    check_event(stream, event)
    return event


def check_event(stream: TwilioStream, event: TwilioEvent) -> None:
    assert isinstance(event, Connected | Start | Media | Mark | Dtmf | Stop)
    if isinstance(event, Start):
        assert event.media_format == MULAW
        assert stream.start is event and event.stream_sid
        assert all(isinstance(v, str) for v in event.custom_parameters.values())
    elif isinstance(event, Media):
        assert event.payload and event.audio == base64.b64decode(event.payload, validate=True)
        assert 0 <= event.chunk < 2**63 and 0 <= event.timestamp < 2**63
    elif isinstance(event, Dtmf):
        assert event.digit in "0123456789*#ABCD" and len(event.digit) == 1
    elif isinstance(event, Stop):
        assert stream.stopped
    if not isinstance(event, Connected):
        assert stream.started


@FUZZ
@given(frame=st.one_of(st.text(), st.binary()), start_first=st.booleans())
def test_fuzz_raw_frames(frame: str | bytes, start_first: bool) -> None:
    feed(started() if start_first else TwilioStream(), frame)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["", "1", "-1", "8000", "AAAA", "AA==", "audio/x-mulaw", SID, "#", "A", "\u00b2"]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def fields(draw: st.DrawFn, /, **strategies: st.SearchStrategy[Any]) -> dict[str, Any]:
    """An object whose fields are mostly plausible, sometimes junk, sometimes missing."""
    obj: dict[str, Any] = {}
    for key, plausible in strategies.items():
        roll = draw(st.integers(0, 11))
        if roll < 10:
            obj[key] = draw(plausible)
        elif roll == 10:
            obj[key] = draw(json_values)
    return obj


media_format = fields(
    encoding=st.just("audio/x-mulaw"), sampleRate=st.just(8000), channels=st.just(1)
)
bodies = {
    "start": fields(
        streamSid=st.sampled_from([SID, SID, "MZother", ""]),
        callSid=st.just(CALL),
        accountSid=st.just(ACCOUNT),
        tracks=st.lists(st.sampled_from(["inbound", "outbound"])),
        mediaFormat=media_format,
        customParameters=st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
    ),
    "media": fields(
        track=st.just("inbound"),
        chunk=st.integers(0, 10**6).map(str),
        timestamp=st.integers(0, 10**6),
        payload=st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
    ),
    "mark": fields(name=st.text(max_size=8)),
    "dtmf": fields(
        digit=st.sampled_from(list("0123456789*#ABCDE")), track=st.just("inbound_track")
    ),
    "stop": fields(callSid=st.just(CALL), accountSid=st.just(ACCOUNT)),
}


@st.composite
def structured(draw: st.DrawFn) -> dict[str, Any]:
    """An object with an "event" key (mostly a real name) and the matching nested body."""
    event = draw(st.sampled_from([*EVENTS, *EVENTS, "clear", "Media", "", "xyz"]))
    frame = {"event": event} | draw(
        fields(streamSid=st.just(SID), sequenceNumber=st.integers(0, 99).map(str))
    )
    if event in bodies:
        frame |= draw(fields(**{event: bodies[event]}))
    elif event:
        frame |= draw(fields(media=bodies["media"]))
    return frame


@FUZZ
@given(
    value=st.one_of(json_values, structured(), structured()),
    setup=st.sampled_from([STARTED, STARTED, STARTED, FRESH, CONNECTED]),
)
def test_fuzz_json_values(value: Any, setup: str) -> None:
    stream = SETUPS[setup]()
    event = feed(stream, json.dumps(value))
    if event is not None:
        # any event accepted here came from a well-formed object with a known event name
        assert isinstance(value, dict) and value["event"] in EVENTS


@FUZZ
@given(
    audio=st.binary(min_size=1, max_size=400),
    chunk=st.integers(0, 2**63 - 1),
    timestamp=st.integers(0, 2**63 - 1),
    seq=st.integers(0, 2**31),
    as_bytes=st.booleans(),
)
def test_valid_media_round_trips(
    audio: bytes, chunk: int, timestamp: int, seq: int, as_bytes: bool
) -> None:
    payload = base64.b64encode(audio).decode("ascii")
    frame = encode_inbound_media(
        SID, payload, chunk=chunk, timestamp=timestamp, sequence_number=seq
    )
    event = started().receive(frame.encode() if as_bytes else frame)
    assert event == Media("inbound", chunk, timestamp, payload)
    assert isinstance(event, Media) and event.audio == audio
    assert binascii.b2a_base64(event.audio, newline=False).decode() == event.payload
