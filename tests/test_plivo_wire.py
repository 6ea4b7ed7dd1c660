"""The simulator's Plivo wire (voxbridge.testing.plivo_wire) round-trips through the codec: what
the wire sends decodes to the expected events, what the codec sends parses to the expected wire
events."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from voxbridge.audio import tone, ulaw_to_pcm16
from voxbridge.carriers.base import (
    MULAW_8K,
    AudioFormat,
    CallerAudio,
    Dtmf,
    HttpRequest,
    MarkPlayed,
    StreamStarted,
)
from voxbridge.carriers.plivo import CAPABILITIES, PlivoStart, PlivoStream
from voxbridge.carriers.plivo_webhooks import PlivoWebhooks
from voxbridge.testing.carrier_wire import AgentSpoke, CallerWire, Cleared, Marked, SimulatedCall
from voxbridge.testing.plivo_wire import EPOCH_MS, PlivoWire

CALL = "12345678-1234-1234-1234-123456789abc"
STREAM = "87654321-4321-4321-4321-cba987654321"
ACCOUNT = "MAXXXXXXXXXXXXXXXXXX"
PARAMETERS = {"voxbridge_token": "eyJhbGciOiJIUzI1NiJ9.e30.a-b_c", "agent": "Zoë"}


def simulated() -> SimulatedCall:
    return SimulatedCall(CALL, STREAM, ACCOUNT, custom_parameters=dict(PARAMETERS))


def connected(
    content_type: str = "audio/x-mulaw;rate=8000",
) -> tuple[PlivoWire, PlivoStream, SimulatedCall]:
    wire, codec, call = PlivoWire(content_type), PlivoStream(), simulated()
    (start,) = wire.handshake(call)
    assert isinstance(codec.decode(start), StreamStarted)
    return wire, codec, call


def test_is_a_caller_wire() -> None:
    wire: CallerWire = PlivoWire()
    assert wire.carrier == "plivo"
    assert wire.capabilities == CAPABILITIES
    assert wire.stop(simulated()) is None  # Plivo sends no stop: the socket closes
    assert wire.upgrade_headers(simulated()) == []


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [
        ("audio/x-mulaw;rate=8000", MULAW_8K),
        ("audio/x-l16;rate=8000", AudioFormat("l16", 8000)),
        ("audio/x-l16;rate=16000", AudioFormat("l16", 16000)),
    ],
)
def test_handshake_starts_the_codec(content_type: str, fmt: AudioFormat) -> None:
    wire, codec, call = PlivoWire(content_type), PlivoStream(), simulated()
    frames = wire.handshake(call)
    assert len(frames) == 1
    event = codec.decode(frames[0])
    assert event == StreamStarted(CALL, STREAM, ACCOUNT, PARAMETERS, fmt)
    assert isinstance(event, StreamStarted) and isinstance(event.details, PlivoStart)
    assert event.details.sequence_number == 1 and call.sequence == 2
    body = json.loads(frames[0])
    assert body["start"]["mediaFormat"] == {
        "encoding": content_type.partition(";")[0],
        "sampleRate": fmt.sample_rate,
    }


def test_mulaw_caller_audio_is_byte_exact_and_counts() -> None:
    wire, codec, call = connected()
    chunk = tone(0.02)
    first = wire.audio(call, chunk)
    second = wire.audio(call, chunk[::-1])
    body = json.loads(first)
    assert body["sequenceNumber"] == 2 and body["media"]["chunk"] == 1
    assert body["media"]["timestamp"] == str(EPOCH_MS)
    assert json.loads(second)["media"]["timestamp"] == str(EPOCH_MS + 20)
    assert body["extra_headers"] == json.loads(wire.handshake(simulated())[0])["extra_headers"]
    assert codec.decode(first) == CallerAudio(body["media"]["payload"])
    event = codec.decode(second)
    assert isinstance(event, CallerAudio)
    assert base64.b64decode(event.payload) == chunk[::-1]
    assert (call.chunk, call.timestamp_ms, call.sequence) == (3, 40, 4)


def test_key_presses_and_checkpoint_echoes() -> None:
    wire, codec, call = connected()
    assert codec.decode(wire.dtmf(call, "7")) == Dtmf("7")
    assert codec.decode(wire.mark_echo(call, "resp-1-3")) == MarkPlayed("resp-1-3")


def test_what_the_codec_sends_parses_back() -> None:
    wire, codec, _ = connected()
    audio = bytes(range(256))
    assert wire.parse(codec.audio(audio)) == AgentSpoke(audio)
    assert wire.parse(codec.mark('odd "name"')) == Marked('odd "name"')
    assert wire.parse(codec.clear()) == Cleared()
    assert wire.parse('{"event":"sendDTMF","dtmf":"12#"}') is None


def test_l16_8k_round_trips_exactly() -> None:
    """At 8 kHz, L16 is G.711 decoded: every mu-law code but 0x7F (-0, which re-encodes as
    0xFF, +0) survives both directions."""
    wire, codec, call = connected("audio/x-l16;rate=8000")
    audio = bytes(code for code in range(256) if code != 0x7F)
    event = codec.decode(wire.audio(call, audio))
    assert isinstance(event, CallerAudio)
    assert base64.b64decode(event.payload) == audio
    assert wire.parse(codec.audio(audio)) == AgentSpoke(audio)
    assert json.loads(codec.audio(audio))["media"]["contentType"] == "audio/x-l16"


def rms(mulaw: bytes) -> float:
    samples = np.frombuffer(ulaw_to_pcm16(mulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


def test_l16_16k_round_trips_within_bounds() -> None:
    """At 16 kHz both sides resample (soxr, HQ), so bytes cannot match: over one second the
    audio keeps its length less the resamplers' delay (<= 60 ms, 45 measured) and its RMS level
    within 1 dB, both ways."""
    wire, codec, call = connected("audio/x-l16;rate=16000")
    sent = tone(1.0, 440.0)
    heard_by_agent, heard_by_caller = bytearray(), bytearray()
    for index in range(0, len(sent), 160):
        chunk = sent[index : index + 160]
        event = codec.decode(wire.audio(call, chunk))
        if event is not None:
            assert isinstance(event, CallerAudio)
            heard_by_agent += base64.b64decode(event.payload)
        spoke = wire.parse(codec.audio(chunk))
        assert isinstance(spoke, AgentSpoke)
        heard_by_caller += spoke.audio
    for heard in (heard_by_agent, heard_by_caller):
        assert 8000 - 8 * 60 <= len(heard) <= 8000
        assert abs(20 * math.log10(rms(bytes(heard[800:])) / rms(sent))) < 1.0


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b'{"event":"clearAudio"}', "JSON text frames only"),
        ("[]", "a JSON object"),
        ('{"event":"media","media":{}}', "no 'media' message"),
        ('{"event":"clearAudio","streamId":"other"}', "not this stream's"),
        ('{"event":"checkpoint","name":3}', "checkpoint without a name"),
        ('{"event":"playAudio"}', "without a media object"),
        (
            '{"event":"playAudio","media":{"contentType":"audio/x-alaw","sampleRate":8000,'
            '"payload":"AA=="}}',
            "plays no 'audio/x-alaw'",
        ),
        (
            '{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000}}',
            "without a payload",
        ),
        (
            '{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,'
            '"payload":"AA="}}',
            "playAudio payload",
        ),
        (
            '{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":"8000",'
            '"payload":"AAAA"}}',
            "not whole samples",
        ),
        ('{"event":"sendDTMF","dtmf":"X"}', "sendDTMF digits"),
    ],
)
def test_parse_refuses_what_plivo_would(frame: str | bytes, match: str) -> None:
    wire, _, _ = connected()
    with pytest.raises(ValueError, match=match):
        wire.parse(frame)


def test_a_signed_upgrade_passes_the_webhooks_check() -> None:
    url = "wss://voice.example.com/plivo/media"
    hooks = PlivoWebhooks(["tok"], public_url="https://voice.example.com")
    headers = dict(PlivoWire(sign_upgrade=("tok", url)).upgrade_headers(simulated()))
    assert hooks.upgrade_signed(HttpRequest(url, "GET", headers), now=0)
    forged = dict(PlivoWire(sign_upgrade=("not-tok", url)).upgrade_headers(simulated()))
    assert not hooks.upgrade_signed(HttpRequest(url, "GET", forged), now=0)


def test_unknown_content_type() -> None:
    with pytest.raises(ValueError, match="contentType"):
        PlivoWire("audio/x-l16;rate=24000")
