"""The simulator's Vonage wire (voxbridge.testing.vonage_wire) round-trips through the codec: what
the wire sends decodes to the expected events, what the codec sends parses to the expected wire
events; and the carrier-neutral engine plays a whole Vonage call with it."""

from __future__ import annotations

import base64
import json
import math
import time

import numpy as np
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_server_stream

from voxbridge.audio import tone, ulaw_to_pcm16
from voxbridge.carriers.base import AudioFormat, CallerAudio, Dtmf, HttpRequest, StreamStarted
from voxbridge.carriers.vonage import CAPABILITIES, CLEAR, VonageConnected, VonageStream
from voxbridge.carriers.vonage_webhooks import VonageWebhooks
from voxbridge.testing import CarrierSimulator
from voxbridge.testing.carrier_wire import AgentSpoke, CallerWire, Cleared, SimulatedCall
from voxbridge.testing.vonage_wire import DTMF_DURATION_MS, VonageWire

CALL = "63f61863-4a51-4f6b-86e1-46edebcf9356"
PARAMETERS = {"voxbridge_token": "eyJhbGciOiJIUzI1NiJ9.e30.a-b_c", "agent": "Zoë"}
SECRET = "vonage-signature-secret-0123456789abcdef"


def simulated(**parameters: str) -> SimulatedCall:
    return SimulatedCall(CALL, "", "", custom_parameters=parameters or dict(PARAMETERS))


def connected(rate: int = 16000) -> tuple[VonageWire, VonageStream, SimulatedCall]:
    wire, codec, call = VonageWire(rate), VonageStream(), simulated()
    (hello,) = wire.handshake(call)
    assert isinstance(codec.decode(hello), StreamStarted)
    return wire, codec, call


def test_is_a_caller_wire() -> None:
    wire: CallerWire = VonageWire()
    assert wire.carrier == "vonage"
    assert wire.capabilities == CAPABILITIES and not wire.capabilities.marks
    assert wire.stop(simulated()) is None  # Vonage sends no stop: the socket closes
    assert wire.upgrade_headers(simulated()) == []
    with pytest.raises(NotImplementedError):
        wire.mark_echo(simulated(), "m")
    with pytest.raises(ValueError, match="8000, 16000 or 24000"):
        VonageWire(44100)


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_handshake_starts_the_codec(rate: int) -> None:
    wire, codec, call = VonageWire(rate), VonageStream(), simulated()
    frames = wire.handshake(call)
    assert len(frames) == 1 and isinstance(frames[0], str)
    event = codec.decode(frames[0])
    expected = {**PARAMETERS, "uuid": CALL}
    assert event == StreamStarted(CALL, "", "", expected, AudioFormat("l16", rate))
    assert isinstance(event, StreamStarted) and isinstance(event.details, VonageConnected)
    assert json.loads(frames[0]) == {
        "event": "websocket:connected",
        "content-type": f"audio/l16;rate={rate}",
        **expected,
    }


def test_the_answers_uuid_is_sent_as_it_is() -> None:
    """Headers from our NCCO (with its uuid) come back verbatim; the simulated call's id is only
    the fallback."""
    wire, codec = VonageWire(), VonageStream()
    event = codec.decode(wire.handshake(simulated(uuid="from-the-ncco", agent="a"))[0])
    assert isinstance(event, StreamStarted) and event.call_id == "from-the-ncco"


def test_8k_caller_audio_is_g711_exact_and_counts() -> None:
    """At 8 kHz, L16 is G.711 decoded: every mu-law code but 0x7F (-0, which re-encodes as
    0xFF, +0) survives, in one 20 ms binary frame of 320 bytes per 160 bytes of mu-law."""
    wire, codec, call = connected(8000)
    audio = bytes(code for code in range(256) if code != 0x7F)[:160]
    frame = wire.audio(call, audio)
    assert isinstance(frame, bytes) and len(frame) == 320
    event = codec.decode(frame)
    assert isinstance(event, CallerAudio)
    assert base64.b64decode(event.payload) == audio
    assert (call.chunk, call.timestamp_ms) == (2, 20)
    assert wire.parse(codec.audio(audio)) == AgentSpoke(audio)
    assert wire.agent_frames == [320] and wire.odd_frames == 0


@pytest.mark.parametrize("nested", [False, True])
def test_key_presses(nested: bool) -> None:
    wire, codec, call = connected()
    wire.dtmf_nested = nested
    frame = wire.dtmf(call, "7")
    body = json.loads(frame)
    assert body["event"] == "websocket:dtmf"
    assert (body["dtmf"] if nested else body)["duration"] == DTMF_DURATION_MS
    assert codec.decode(frame) == Dtmf("7")


def test_what_the_codec_sends_parses_back() -> None:
    wire, codec, _ = connected(8000)
    assert codec.mark("m") is None
    assert wire.parse(codec.clear()) == Cleared()
    assert wire.parse(CLEAR) == Cleared()
    assert wire.parse('{"action":"notify","payload":{"n":1}}') is None


def rms(mulaw: bytes) -> float:
    samples = np.frombuffer(ulaw_to_pcm16(mulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


@pytest.mark.parametrize("rate", [16000, 24000])
def test_resampled_audio_round_trips_within_bounds(rate: int) -> None:
    """At 16 and 24 kHz both sides resample (soxr, HQ), so bytes cannot match: over one second
    the audio keeps its length less the resamplers' delay (<= 60 ms) and its RMS level within
    1 dB, both ways; every frame either way is exactly 20 ms."""
    wire, codec, call = connected(rate)
    sent = tone(1.0, 440.0)
    heard_by_agent, heard_by_caller = bytearray(), bytearray()
    frame_bytes = rate * 2 // 50
    for index in range(0, len(sent), 160):
        chunk = sent[index : index + 160]
        caller_frame = wire.audio(call, chunk)
        assert len(caller_frame) == frame_bytes
        event = codec.decode(caller_frame)
        if event is not None:
            assert isinstance(event, CallerAudio)
            heard_by_agent += base64.b64decode(event.payload)
        spoke = wire.parse(codec.audio(chunk))
        assert isinstance(spoke, AgentSpoke)
        heard_by_caller += spoke.audio
    assert wire.agent_frames == [frame_bytes] * 50 and wire.odd_frames == 0
    for heard in (heard_by_agent, heard_by_caller):
        assert 8000 - 8 * 60 <= len(heard) <= 8000
        assert abs(20 * math.log10(rms(bytes(heard[800:])) / rms(sent))) < 1.0


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\x00\x00\x00", "not whole samples"),
        ("[]", "a JSON object"),
        ("not json", "Expecting value"),
        ('{"event":"websocket:clear"}', "actions, not events"),
        ('{"action":"talk","text":"hi"}', "no action 'talk'"),
        ("{}", "no action .None."),
    ],
)
def test_parse_refuses_what_vonage_would(frame: str | bytes, match: str) -> None:
    wire, _, _ = connected()
    with pytest.raises(ValueError, match=match):
        wire.parse(frame)


def test_a_signed_upgrade_passes_the_webhooks_check() -> None:
    url = "wss://voice.example.com/vonage/media"
    hooks = VonageWebhooks([SECRET])
    headers = {
        name.lower(): value
        for name, value in VonageWire(signature_secret=SECRET).upgrade_headers(simulated())
    }
    # the wire signs with the wall clock, as Vonage does
    assert hooks.upgrade_signed(HttpRequest(url, "GET", headers), now=time.time())
    forged = {
        name.lower(): value
        for name, value in VonageWire(signature_secret="x" * 40).upgrade_headers(simulated())
    }
    assert not hooks.upgrade_signed(HttpRequest(url, "GET", forged), now=time.time())


# --- the engine plays a Vonage call ------------------------------------------------------------


async def _echo_bridge(stream: trio.abc.Stream, received: list[object]) -> None:
    """A minimal bridge: decodes with VonageStream, sends every caller frame back as agent audio,
    clears once after 200 ms of audio, and closes when the caller does."""
    async with trio.open_nursery() as nursery:
        request = await wrap_server_stream(nursery, stream)  # type: ignore[arg-type]
        ws = await request.accept()
        codec = VonageStream()
        audio_frames = 0
        try:
            while True:
                event = codec.decode(await ws.get_message())
                received.append(event)
                if isinstance(event, CallerAudio):
                    audio_frames += 1
                    frame = codec.audio(base64.b64decode(event.payload))
                    if frame:
                        await ws.send_message(frame)
                    if audio_frames == 10:
                        await ws.send_message(codec.clear())
        except ConnectionClosed:  # the caller closed: the call is over
            pass
        nursery.cancel_scope.cancel()


async def test_the_engine_plays_a_vonage_call(autojump_clock: trio.testing.MockClock) -> None:
    """A 1 s call over memory streams: the handshake starts the stream with the call's uuid, the
    caller's audio flows as 20 ms binary frames, agent audio comes back and is heard, the clear
    arrives, no mark is ever echoed, and the caller hangs up by closing (no stop)."""
    client, server = trio.testing.memory_stream_pair()
    received: list[object] = []
    wire = VonageWire(16000)
    simulator = CarrierSimulator(
        client, seconds=1.0, wire=wire, call_sid=CALL, dtmf=[(0.5, "5")], close_wait=5.0
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_echo_bridge, server, received)
        result = await simulator.run()
    assert isinstance(received[0], StreamStarted) and received[0].call_id == CALL
    assert Dtmf("5") in received
    assert sum(isinstance(event, CallerAudio) for event in received) >= 48
    assert result.frames_sent == 50 and result.dtmf_sent == 1
    assert result.protocol_errors == []
    assert result.clears_received == 1
    assert (result.marks_received, result.marks_echoed) == (0, 0)
    assert simulator.hung_up  # Vonage has no stop: it closed the socket
    assert result.frames_received >= 40 and wire.odd_frames == 0
    assert result.heard_ms() > 500  # what played after the clear, and before it
