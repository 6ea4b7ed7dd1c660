"""Twilio as a :class:`~voxbridge.carriers.base.CarrierCodec`: ``TwilioStream.decode`` returns the
carrier-neutral events the call speaks, with exactly the checks of ``receive`` (the table of bad
input and the fuzzers of tests/test_twilio_codec.py are run through ``decode`` here)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_twilio_codec import (
    ACCOUNT,
    BAD,
    CALL,
    FUZZ,
    SETUPS,
    SID,
    STARTED,
    json_values,
    snapshot,
    started,
    structured,
)

from voxbridge.carriers import base
from voxbridge.carriers.base import (
    MULAW_8K,
    CallerAudio,
    Capabilities,
    CarrierCodec,
    CarrierEvent,
    LocalProtocolError,
    MarkPlayed,
    StreamStarted,
    StreamStopped,
)
from voxbridge.carriers.twilio import (
    CAPABILITIES,
    Connected,
    Dtmf,
    Mark,
    Media,
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

PAYLOAD = base64.b64encode(bytes(range(160))).decode("ascii")


def neutral(event: TwilioEvent) -> CarrierEvent | None:
    """What ``decode`` must return for the frame ``receive`` decoded as ``event``."""
    if isinstance(event, Start):
        return StreamStarted(
            event.call_sid, event.stream_sid, event.account_sid, event.custom_parameters
        )
    if isinstance(event, Media):
        return CallerAudio(event.payload) if event.track == "inbound" else None
    if isinstance(event, Mark):
        return MarkPlayed(event.name)
    if isinstance(event, Dtmf):
        return base.Dtmf(event.digit)
    if isinstance(event, Stop):
        return StreamStopped()
    assert isinstance(event, Connected)
    return None


def test_a_twilio_call_decodes_to_the_neutral_events() -> None:
    stream = TwilioStream()
    assert stream.decode(encode_connected()) is None
    started = stream.decode(
        encode_start(SID, CALL, ACCOUNT, custom_parameters={"agent": "sales", "token": "t"})
    )
    assert started == StreamStarted(
        call_id=CALL,
        stream_id=SID,
        account_id=ACCOUNT,
        custom_parameters={"agent": "sales", "token": "t"},
        audio_format=MULAW_8K,
    )
    assert isinstance(started, StreamStarted)
    assert started.details == stream.start  # the Twilio Start, for Twilio-specific fields
    assert isinstance(started.details, Start) and started.details.tracks == ("inbound",)
    media = encode_inbound_media(SID, PAYLOAD, chunk=1, timestamp=0, sequence_number=2)
    audio = stream.decode(media)
    assert type(audio) is CallerAudio
    assert audio.payload == PAYLOAD  # verbatim: forwarded as received, never re-encoded
    assert stream.decode(encode_mark_echo(SID, "vb7", 3)) == MarkPlayed("vb7")
    assert stream.decode(encode_dtmf(SID, "#", 4)) == base.Dtmf("#")
    assert stream.decode(encode_stop(SID, CALL, ACCOUNT, 5)) == StreamStopped()
    assert stream.stopped
    with pytest.raises(RemoteProtocolError, match="frame after stop"):
        stream.decode(media)


def test_media_of_another_track_carries_nothing_for_the_call() -> None:
    frame = json.dumps(
        {
            "event": "media",
            "streamSid": SID,
            "media": {"track": "outbound", "chunk": "1", "timestamp": "0", "payload": PAYLOAD},
        }
    )
    assert started().decode(frame) is None
    assert started().receive(frame) == Media("outbound", 1, 0, PAYLOAD)


def test_start_without_connected_and_bytes_frames() -> None:
    stream = TwilioStream()
    event = stream.decode(encode_start(SID, CALL, "").encode())  # no AccountSid: ""
    assert event == StreamStarted(CALL, SID, "", {})
    assert stream.call_sid == CALL and stream.stream_sid == SID


def test_capabilities_and_outbound_frames() -> None:
    assert TwilioStream.capabilities is CAPABILITIES
    assert (
        Capabilities(marks=True, echoes_cleared_marks=True, sends_stop=True, binary_audio=False)
        == CAPABILITIES
    )
    stream = TwilioStream()
    for build in (lambda: stream.audio(b"\xff"), lambda: stream.mark("m"), stream.clear):
        with pytest.raises(LocalProtocolError, match="before start"):
            build()
    stream.decode(encode_start(SID, CALL, ACCOUNT))
    assert stream.audio(b"\x00\x01\xff") == (
        f'{{"event":"media","streamSid":"{SID}","media":{{"payload":"AAH/"}}}}'
    )
    assert stream.audio(b"\x7f" * 800) == stream.media(b"\x7f" * 800)
    assert stream.mark("vb1") == f'{{"event":"mark","streamSid":"{SID}","mark":{{"name":"vb1"}}}}'
    assert stream.clear() == f'{{"event":"clear","streamSid":"{SID}"}}'
    codec: CarrierCodec = stream  # what the call takes (mypy checks the protocol)
    assert codec.capabilities.marks


@pytest.mark.parametrize(("setup", "frame", "match"), BAD)
def test_decode_rejects_what_receive_rejects(setup: str, frame: str | bytes, match: str) -> None:
    stream = SETUPS[setup]()
    before = snapshot(stream)
    with pytest.raises(RemoteProtocolError, match=match):
        stream.decode(frame)
    assert snapshot(stream) == before, "a rejected frame must leave the state unchanged"


def outcome(stream: TwilioStream, frame: str | bytes, decode: bool) -> tuple[str, object]:
    try:
        return "ok", stream.decode(frame) if decode else neutral(stream.receive(frame))
    except RemoteProtocolError as exc:
        return "error", str(exc)


@FUZZ
@given(
    frames=st.lists(
        st.one_of(structured().map(json.dumps), json_values.map(json.dumps), st.text(max_size=30)),
        max_size=6,
    ),
    setup=st.sampled_from([STARTED, STARTED, "fresh", "connected"]),
)
def test_decode_and_receive_agree_on_any_sequence(frames: list[str], setup: str) -> None:
    """Two streams fed the same frames: ``decode`` accepts exactly what ``receive`` accepts, with
    the same error, returns the neutral form of ``receive``'s event, and leaves the same state."""
    by_decode, by_receive = SETUPS[setup](), SETUPS[setup]()
    for frame in frames:
        assert outcome(by_decode, frame, True) == outcome(by_receive, frame, False)
        assert snapshot(by_decode) == snapshot(by_receive)


@FUZZ
@given(frame=st.one_of(st.text(), st.binary()), start_first=st.booleans())
def test_decode_raises_nothing_but_remote_protocol_errors(
    frame: str | bytes, start_first: bool
) -> None:
    stream = started() if start_first else TwilioStream()
    try:
        event: Any = stream.decode(frame)
    except RemoteProtocolError:
        return
    assert event is None or isinstance(
        event, StreamStarted | CallerAudio | MarkPlayed | base.Dtmf | StreamStopped
    )
