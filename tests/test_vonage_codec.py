"""Tests of the sans-IO Vonage WebSocket codec (voxbridge.carriers.vonage)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

import attrs
import carrierkit
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxbridge.audio import b64_decode, pcm16_to_ulaw, tone, ulaw_to_pcm16
from voxbridge.carriers import vonage
from voxbridge.carriers.base import (
    AudioFormat,
    CallerAudio,
    CarrierCodec,
    Dtmf,
    LocalProtocolError,
    StreamStarted,
)
from voxbridge.carriers.transcode import Transcoder
from voxbridge.carriers.vonage import (
    CAPABILITIES,
    CLEAR,
    HEADERS_MAX,
    L16Framer,
    VonageConnected,
    VonageStream,
    content_type_of,
    encode_headers,
    parse_content_type,
)
from voxbridge.carriers.vonage_webhooks import SPEC, VonageSettings
from voxbridge.errors import RemoteProtocolError, SettingsError
from voxbridge.server.security import TOKEN_PARAMETER, CallTokens

CALL = "63f61863-4a51-4f6b-86e1-46edebcf9356"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
L16_8K = AudioFormat("l16", 8000)
L16_16K = AudioFormat("l16", 16000)
L16_24K = AudioFormat("l16", 24000)
FORMATS = {8000: L16_8K, 16000: L16_16K, 24000: L16_24K}

# ------------------------------------------------------------- the documented frames (D.3, D.6)

# Vonage's first message as its WebSockets guide shows it: the endpoint's headers ({"app":
# "demo"} in the NCCO example of PROTOCOLS.md D.3) next to the content type. voxbridge's answer
# adds the call's uuid to the headers (the guide's example has none: see the module docstring).
DOC_CONNECTED = {
    "event": "websocket:connected",
    "content-type": "audio/l16;rate=16000",
    "app": "demo",
}
DOC_DTMF = '{"event":"websocket:dtmf","digit":"5","duration":260}'  # PROTOCOLS.md D.6


def connected_frame(rate: int = 16000, **headers: Any) -> str:
    headers.setdefault("uuid", CALL)
    return json.dumps(
        {"event": "websocket:connected", "content-type": f"audio/l16;rate={rate}", **headers}
    )


def started(rate: int = 16000) -> VonageStream:
    codec = VonageStream()
    assert isinstance(codec.decode(connected_frame(rate)), StreamStarted)
    return codec


def snapshot(codec: VonageStream) -> tuple[object, ...]:
    outbound = codec._outbound
    return (
        codec.connected,
        codec.audio_format,
        codec.unknown_events,
        id(outbound),
        None if outbound is None else len(outbound._pending),
    )


def test_is_a_carrier_codec_with_vonage_capabilities() -> None:
    codec: CarrierCodec = VonageStream()
    assert codec.capabilities is CAPABILITIES
    assert (CAPABILITIES.marks, CAPABILITIES.echoes_cleared_marks) == (False, False)
    assert (CAPABILITIES.sends_stop, CAPABILITIES.binary_audio) == (False, True)
    assert vonage.TOKEN_HEADER == TOKEN_PARAMETER  # the codec reads the server's token name


def test_decodes_the_documented_connected_with_our_uuid() -> None:
    codec = VonageStream()
    event = codec.decode(json.dumps({**DOC_CONNECTED, "uuid": CALL}))
    assert event == StreamStarted(
        call_id=CALL,
        stream_id="",
        account_id="",
        custom_parameters={"app": "demo", "uuid": CALL},
        audio_format=L16_16K,
    )
    assert isinstance(event, StreamStarted)
    assert event.details == VonageConnected(
        "audio/l16;rate=16000", L16_16K, {"app": "demo", "uuid": CALL}
    )
    assert codec.connected is event.details and codec.started
    assert codec.audio_format == L16_16K


def test_the_documented_connected_alone_names_no_call() -> None:
    codec = VonageStream()
    with pytest.raises(RemoteProtocolError, match="names no call"):
        codec.decode(json.dumps(DOC_CONNECTED))
    assert not codec.started


def test_the_call_id_comes_from_the_token_without_a_uuid_header() -> None:
    tokens = CallTokens(["a-signature-secret"], ttl=60)
    token = tokens.mint(CALL, now=1_767_225_600, extra={"agent": "support"})
    event = VonageStream().decode(
        json.dumps({**DOC_CONNECTED, TOKEN_PARAMETER: token})  # no uuid
    )
    assert isinstance(event, StreamStarted) and event.call_id == CALL
    # and it is the id the server verifies the token against
    assert tokens.verify(event.custom_parameters[TOKEN_PARAMETER], event.call_id, now=1_767_225_601)
    # the uuid header wins over the token (a mismatch then fails the server's token check)
    event = VonageStream().decode(connected_frame(uuid="other-call", **{TOKEN_PARAMETER: token}))
    assert isinstance(event, StreamStarted) and event.call_id == "other-call"


@pytest.mark.parametrize(
    "token", ["", "not-a-jwt", "a.b.c", "a.e30.c", "a." + "A" * 5000 + ".c", "a.WyJzdWIiXQ.c"]
)
def test_a_token_without_a_subject_names_no_call(token: str) -> None:
    with pytest.raises(RemoteProtocolError, match="names no call"):
        VonageStream().decode(json.dumps({**DOC_CONNECTED, TOKEN_PARAMETER: token}))


def test_header_values_come_back_as_text() -> None:
    """Our headers are strings; an operator's NCCO may hold other JSON values: they come back
    as their compact JSON, nothing lost."""
    event = VonageStream().decode(
        connected_frame(n=5, flag=True, none=None, nested={"a": [1, "b"]}, text="Zoë")
    )
    assert isinstance(event, StreamStarted)
    assert event.custom_parameters == {
        "uuid": CALL,
        "n": "5",
        "flag": "true",
        "none": "null",
        "nested": '{"a":[1,"b"]}',
        "text": "Zoë",
    }


def dtmf_nested(digit: str) -> str:
    return json.dumps({"event": "websocket:dtmf", "dtmf": {"digit": digit, "duration": 100}})


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (DOC_DTMF, Dtmf("5")),
        ('{"event":"websocket:dtmf","digit":"#"}', Dtmf("#")),
        (dtmf_nested("*"), Dtmf("*")),
        (dtmf_nested("D"), Dtmf("D")),
        ('{"event":"websocket:cleared"}', None),
        ('{"event":"websocket:notify","payload":{"id":1}}', None),
        (b"", None),
    ],
)
def test_decodes_frames_after_connected(frame: str | bytes, expected: object) -> None:
    codec = started()
    assert codec.decode(frame) == expected


def test_unknown_events_are_counted_and_ignored() -> None:
    codec = VonageStream()
    assert codec.decode('{"event":"websocket:something-new"}') is None
    codec = started()
    assert codec.decode('{"event":"websocket:error","reason":"x"}') is None
    assert codec.decode('{"event":""}') is None
    assert codec.unknown_events == 2


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_each_rate_starts_its_format(rate: int) -> None:
    event = VonageStream().decode(connected_frame(rate))
    assert isinstance(event, StreamStarted) and event.audio_format == FORMATS[rate]


@pytest.mark.parametrize(
    ("setup", "frame", "match"),
    [
        ("fresh", b"\x00\x00", "audio before websocket:connected"),
        ("fresh", DOC_DTMF, "websocket:dtmf before websocket:connected"),
        ("fresh", '{"event":"websocket:cleared"}', "websocket:cleared before"),
        ("fresh", connected_frame(16000).replace("l16", "pcmu"), "not one voxbridge streams"),
        ("fresh", connected_frame(44100), "not one voxbridge streams"),
        ("fresh", connected_frame().replace('"content-type"', '"ct"'), "has no content-type"),
        ("fresh", '{"event":"websocket:connected","content-type":16000}', "must be a string"),
        ("fresh", "not json", "malformed JSON"),
        ("fresh", "[]", "must be a JSON object"),
        ("fresh", "{}", "no 'event' field"),
        ("fresh", '{"event":7}', "event must be a string"),
        ("fresh", '{"event":"x","n":1e999}', "malformed JSON"),  # orjson: no infinities
        ("fresh", "x" * (VonageStream.MAX_FRAME + 1), "exceeds MAX_FRAME"),
        ("started", connected_frame(), "duplicate websocket:connected"),
        ("started", b"\x00\x00\x00", "not whole samples"),
        ("started", b"\x00" * (VonageStream.MAX_FRAME + 2), "exceeds MAX_FRAME"),
        ("started", '{"event":"websocket:dtmf"}', "has no digit"),
        ("started", '{"event":"websocket:dtmf","digit":"E"}', "must be one of"),
        ("started", '{"event":"websocket:dtmf","digit":5}', "must be one of"),
        ("started", '{"event":"websocket:dtmf","digit":"12"}', "must be one of"),
        ("started", '{"event":"websocket:dtmf","dtmf":"5"}', "has no digit"),
        ("started", dtmf_nested(""), "must be one of"),
    ],
)
def test_rejects_bad_input(setup: str, frame: str | bytes, match: str) -> None:
    codec = started() if setup == "started" else VonageStream()
    before = snapshot(codec)
    with pytest.raises(RemoteProtocolError, match=match):
        codec.decode(frame)
    assert snapshot(codec) == before


def test_a_frame_of_another_type_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="text or bytes"):
        VonageStream().decode(42)  # type: ignore[arg-type]


def test_a_rejected_connected_leaves_the_stream_startable() -> None:
    codec = VonageStream()
    with pytest.raises(RemoteProtocolError):
        codec.decode(connected_frame(12345))
    assert isinstance(codec.decode(connected_frame()), StreamStarted)


def test_safety_net_turns_decoder_bugs_into_protocol_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: VonageStream, message: dict[str, Any]) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(VonageStream, "_decode_dtmf", broken)
    with pytest.raises(RemoteProtocolError, match="unexpected error"):
        started().decode(DOC_DTMF)


def test_frames_of_exactly_max_frame_are_accepted() -> None:
    codec = started(8000)
    event = codec.decode(b"\x00\x00" * (VonageStream.MAX_FRAME // 2))
    assert isinstance(event, CallerAudio)
    assert len(b64_decode(event.payload)) == VonageStream.MAX_FRAME // 2
    text = '{"event":"websocket:notify","pad":"' + "x" * VonageStream.MAX_FRAME
    assert codec.decode(text[: VonageStream.MAX_FRAME - 2] + '"}') is None


# ------------------------------------------------------------------------------------ outbound


@pytest.mark.parametrize(
    "send",
    [lambda c: c.audio(b"\xff" * 160), lambda c: c.mark("m"), lambda c: c.clear()],
)
def test_outbound_before_connected_is_a_local_error(send: Callable[[VonageStream], Any]) -> None:
    with pytest.raises(LocalProtocolError, match="before websocket:connected"):
        send(VonageStream())


def test_outbound_frames_have_vonages_shape() -> None:
    codec = started()
    assert codec.mark("resp-1") is None  # no marks
    assert codec.clear() == CLEAR
    assert json.loads(CLEAR) == {"action": "clear"}
    frame = codec.audio(tone(0.02))
    assert isinstance(frame, bytes) and len(frame) == 640  # 20 ms of 16 kHz L16


@given(audio=st.binary(max_size=2000), rate=st.sampled_from([8000, 16000, 24000]))
@FUZZ
def test_outbound_audio_is_whole_frames_whatever_the_input(audio: bytes, rate: int) -> None:
    """Provider bytes only ever become L16 samples in a binary frame of whole 20 ms frames
    (empty: nothing whole ready yet); the one text frame is a constant."""
    codec = started(rate)
    frame_bytes = rate * 2 // 50
    out = codec.audio(audio)
    assert isinstance(out, bytes) and len(out) % frame_bytes == 0
    assert codec.clear() == CLEAR


def test_8k_converts_exactly_both_ways() -> None:
    """At 8 kHz there is no resampling: L16 -> mu-law is G.711 itself, exactly, and 20 ms of
    mu-law is one 320-byte frame."""
    codec = started(8000)
    pcm = ulaw_to_pcm16(tone(0.02))
    assert codec.decode(pcm) == CallerAudio(base64.b64encode(pcm16_to_ulaw(pcm)).decode())
    agent = tone(0.06, 300.0)
    frame = codec.audio(agent)
    assert frame == ulaw_to_pcm16(agent) and len(frame) == 960
    assert [len(codec.audio(agent[i : i + 160])) for i in range(0, 480, 160)] == [320] * 3


def energy(mulaw: bytes) -> float:
    samples = np.frombuffer(ulaw_to_pcm16(mulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def l16_energy(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


@pytest.mark.parametrize("rate", [16000, 24000])
def test_resampled_rates_keep_length_and_level_in_whole_frames(rate: int) -> None:
    """16 and 24 kHz in 20 ms chunks: resampling is not byte-exact, so the honest assertions are
    bounds. Over a second the caller's audio comes out as 8 kHz mu-law within the resamplers'
    delay (two here, the caller's up and the codec's down: at most 60 ms short) and the tone's
    RMS level within 1 dB; agent audio goes out as exactly one 20 ms frame per 20 ms chunk (the
    primed resampler always has one ready), one second of it in total, at the same level."""
    codec = started(rate)
    fmt = FORMATS[rate]
    up = Transcoder(fmt)  # the caller's side
    sent = tone(1.0, 440.0)
    heard = bytearray()
    for index in range(0, len(sent), 160):
        pcm = up.from_neutral(sent[index : index + 160])
        event = codec.decode(pcm)
        if event is None:  # the resamplers are still filling
            continue
        assert isinstance(event, CallerAudio)
        heard += b64_decode(event.payload)
    assert 8000 - 8 * 60 <= len(heard) <= 8000
    assert abs(20 * math.log10(energy(bytes(heard[400:])) / energy(sent))) < 1.0
    frame_bytes = rate * 2 // 50
    played = [codec.audio(sent[index : index + 160]) for index in range(0, len(sent), 160)]
    assert [len(frame) for frame in played] == [frame_bytes] * 50
    pcm_out = b"".join(played)
    level = l16_energy(pcm_out[frame_bytes * 2 :]) / l16_energy(ulaw_to_pcm16(sent))
    assert abs(20 * math.log10(level)) < 1.0


def test_clear_drops_the_leftover_and_the_resampler_tail() -> None:
    """After a clear nothing of the interrupted audio plays: the leftover (< one frame) and the
    resampler's held-back tail are gone; the next audio starts a fresh, primed frame."""
    codec = started(16000)
    loud = tone(0.5, 440.0, amplitude=0.9)
    for index in range(0, len(loud), 100):  # 12.5 ms pieces: a leftover builds up
        codec.audio(loud[index : index + 100])
    assert codec._outbound is not None and len(codec._outbound._pending) > 0
    codec.clear()
    silence = b"\xff" * 160
    after = codec.audio(silence)
    assert len(after) == 640
    assert np.abs(np.frombuffer(after, dtype="<i2")).max() < 50  # silence, no loud tail
    # without the clear, the same call plays the tail of the tone
    codec = started(16000)
    for index in range(0, len(loud), 100):
        codec.audio(loud[index : index + 100])
    tail = codec.audio(silence)
    assert np.abs(np.frombuffer(tail, dtype="<i2")).max() > 1000


def test_framer_holds_back_less_than_a_frame() -> None:
    """Less than 20 ms ready: nothing goes out (the call sends no empty frame) and the audio
    waits for the next chunk; nothing is lost."""
    framer = L16Framer(L16_8K)
    assert framer.frame(b"\xff" * 80) == b""  # 10 ms: held back
    assert framer.frame(b"\x00" * 80) == ulaw_to_pcm16(b"\xff" * 80 + b"\x00" * 80)
    assert framer.frame(b"") == b""
    framer = L16Framer(L16_16K)  # primed: 320 bytes (10 ms) ready before any input
    assert [len(framer.frame(b"\xff" * 80)) for _ in range(5)] == [640, 0, 640, 0, 640]


def test_content_types() -> None:
    assert content_type_of(16000) == "audio/l16;rate=16000"
    assert parse_content_type("audio/l16;rate=8000") == L16_8K
    assert parse_content_type(" Audio/L16 ; rate=24000 ") == L16_24K
    for bad in ("audio/l16", "audio/l16;rate=", "audio/l16;rate=44100", "audio/pcmu;rate=8000"):
        with pytest.raises(RemoteProtocolError):
            parse_content_type(bad)
    with pytest.raises(ValueError, match="8000, 16000 or 24000"):
        content_type_of(11025)


def test_headers_limits() -> None:
    assert encode_headers({"a": "b"}) == {"a": "b"}
    with pytest.raises(ValueError, match="512-byte"):
        encode_headers({"x": "y" * HEADERS_MAX})
    for reserved in ("event", "content-type", ""):
        with pytest.raises(ValueError, match="cannot be the name"):
            encode_headers({reserved: "v"})


def test_a_per_call_token_and_the_uuid_fit_in_the_headers() -> None:
    """The webhook's signed token for a Vonage call (a UUID call id, an agent name of 40
    characters, the answering-machine claim) and the uuid fit Vonage's 512 bytes."""
    tokens = CallTokens(["a-signature-secret"], ttl=60)
    token = tokens.mint(
        CALL, now=1_767_225_600, extra={"agent": "a" * 40, "voxbridge_machine": "1"}
    )
    headers = encode_headers({TOKEN_PARAMETER: token, "uuid": CALL})
    assert len(json.dumps(headers, separators=(",", ":"))) < 400
    event = VonageStream().decode(connected_frame(**headers))
    assert isinstance(event, StreamStarted) and event.call_id == CALL
    assert tokens.verify(event.custom_parameters[TOKEN_PARAMETER], CALL, now=1_767_225_601)


# ------------------------------------------------------------------------------------ settings


def test_settings_defaults_and_validation() -> None:
    own = VonageSettings()
    assert (own.sample_rate, own.api_url) == (16000, "https://api.nexmo.com")
    assert own.signature_secrets == () and own.private_key_pem is None
    assert VonageSettings(signature_secret="a, b").signature_secrets == ("a", "b")
    with pytest.raises(SettingsError, match="VONAGE_SIGNATURE_SECRET"):
        VonageSettings(signature_secret="a,b,c")
    with pytest.raises(SettingsError, match="VONAGE_SIGNATURE_SECRET"):
        VonageSettings(signature_secret="a,")
    with pytest.raises(SettingsError, match="--vonage-sample-rate"):
        VonageSettings(sample_rate=44100)
    with pytest.raises(SettingsError, match="PEM"):
        VonageSettings(private_key="private.key")
    one_line = "-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----\\n"
    assert VonageSettings(private_key=one_line).private_key_pem == one_line.replace("\\n", "\n")


def test_settings_keep_secrets_out_of_repr_and_flags() -> None:
    own = VonageSettings(
        application_id="app-1",
        signature_secret="s3cr3t-signature",
        private_key="-----BEGIN PRIVATE KEY-----\nsecret-key-material\n",
    )
    assert "s3cr3t" not in repr(own) and "secret-key-material" not in repr(own)
    fields = {field.name: field.metadata for field in attrs.fields(VonageSettings)}
    assert fields["signature_secret"]["cli"] is False and fields["private_key"]["cli"] is False
    assert fields["signature_secret"]["env"] == ("VONAGE_SIGNATURE_SECRET",)
    assert fields["private_key"]["env"] == ("VONAGE_PRIVATE_KEY",)
    assert fields["sample_rate"]["cli"] is True


def test_the_spec() -> None:
    assert (SPEC.name, SPEC.webhook, SPEC.media_path, SPEC.webhook_path) == (
        "vonage",
        "answer",
        "/vonage/media",
        "/vonage/answer",
    )
    assert isinstance(SPEC.codec(), VonageStream)
    assert SPEC.settings is VonageSettings
    assert SPEC.simulator == "voxbridge.testing.vonage_wire:VonageWire"
    hooks = SPEC.webhooks(None, VonageSettings(signature_secret="x" * 32, sample_rate=8000))  # type: ignore[arg-type]
    assert hooks.checks and hooks.token_secrets == ("x" * 32,)
    assert SPEC.rest(None, VonageSettings()) is None  # type: ignore[arg-type]
    assert SPEC.rest(None, VonageSettings(application_id="app")) is None  # type: ignore[arg-type]
    broken = VonageSettings(application_id="app", private_key="-----BEGIN nonsense")
    with pytest.raises(SettingsError, match="VONAGE_PRIVATE_KEY"):
        SPEC.rest(None, broken)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ property

EVENTS = ["websocket:connected", "websocket:dtmf", "websocket:cleared", "websocket:notify"]


def feed(codec: VonageStream, frame: str | bytes) -> object:
    """Decode ``frame``; only a RemoteProtocolError raised by a real check may come out, and
    then the state is unchanged."""
    before = snapshot(codec)
    try:
        event = codec.decode(frame)
    except RemoteProtocolError as exc:
        assert not str(exc).startswith("unexpected error"), f"decoder bug: {exc!r}"
        assert snapshot(codec) == before
        return None
    if isinstance(event, StreamStarted):
        assert codec.connected is event.details and event.call_id
        assert event.audio_format in FORMATS.values()
        assert all(isinstance(v, str) for v in event.custom_parameters.values())
        assert not {"event", "content-type"} & set(event.custom_parameters)
    elif isinstance(event, CallerAudio):
        assert event.payload and b64_decode(event.payload)
    elif isinstance(event, Dtmf):
        assert len(event.digit) == 1 and event.digit in "0123456789*#ABCD"
    if event is not None:
        assert codec.started
    return event


@FUZZ
@given(
    frame=st.one_of(st.text(), st.binary(max_size=3000)),
    rate=st.sampled_from([8000, 16000, 24000, None]),
)
def test_fuzz_raw_frames(frame: str | bytes, rate: int | None) -> None:
    feed(VonageStream() if rate is None else started(rate), frame)


json_values = carrierkit.json_values(
    "", "5", "#", "E", "audio/l16;rate=16000", "audio/l16;rate=8000", CALL
)
fields = carrierkit.fields_of(json_values)


@st.composite
def structured(draw: st.DrawFn) -> dict[str, Any]:
    """An object with an "event" key (mostly a real name) and its fields."""
    event = draw(st.sampled_from([*EVENTS, *EVENTS, "websocket:error", "", "connected"]))
    frame: dict[str, Any] = {"event": event}
    frame |= draw(
        fields(
            **{
                "content-type": st.sampled_from(
                    ["audio/l16;rate=16000", "audio/l16;rate=8000", "audio/l16;rate=24000", "x"]
                ),
                "uuid": st.sampled_from([CALL, "", "x"]),
                "digit": st.sampled_from(list("0123456789*#ABCDE")),
                "duration": st.integers(0, 10**4),
                "dtmf": fields(digit=st.sampled_from(list("0123456789*#ABCDE"))),
                "voxbridge_token": st.text(max_size=40),
            }
        )
    )
    return frame


@FUZZ
@given(
    value=st.one_of(json_values, structured(), structured()),
    rate=st.sampled_from([8000, 16000, None, None]),
)
def test_fuzz_json_values(value: Any, rate: int | None) -> None:
    codec = VonageStream() if rate is None else started(rate)
    event = feed(codec, json.dumps(value))
    if event is not None:
        assert isinstance(value, dict) and value["event"] in EVENTS


@FUZZ
@given(pcm=st.binary(max_size=1000).map(lambda b: b[: len(b) // 2 * 2]))
def test_valid_8k_audio_round_trips_through_g711(pcm: bytes) -> None:
    event = started(8000).decode(pcm)
    if not pcm:
        assert event is None
        return
    assert event == CallerAudio(base64.b64encode(pcm16_to_ulaw(pcm)).decode())
