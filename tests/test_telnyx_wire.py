"""The Telnyx caller wire (voxbridge.testing.telnyx_wire) round-trips through the codec.

What the wire sends (as Telnyx) decodes to the expected neutral events; what the codec sends
parses, as Telnyx would read it, to the expected wire events. Mu-law 8 kHz is byte-exact both
ways; L16 at 8 kHz is sample-exact (mu-law -> linear -> mu-law keeps every sample value); L16 at
16 kHz goes through two soxr resamplers per direction (band-limited, delayed by their filters), so
there the assertions are on length (exact, 20 ms per 20 ms once started) and on energy (within
1 dB of the input tone, which lies far below the 4 kHz band edge).
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from voxbridge.audio import FRAME_BYTES, tone, ulaw_to_pcm16
from voxbridge.carriers.base import (
    AudioFormat,
    CallerAudio,
    Dtmf,
    HttpRequest,
    MarkPlayed,
    StreamStarted,
    StreamStopped,
)
from voxbridge.carriers.telnyx import TelnyxStream
from voxbridge.carriers.telnyx_webhooks import TelnyxSettings, TelnyxWebhooks
from voxbridge.testing.carrier_wire import AgentSpoke, Cleared, Marked, SimulatedCall
from voxbridge.testing.telnyx_wire import TelnyxWire

PARAMS = {"voxbridge_token": "a.b.c", "agent": "sales"}


def new_call() -> SimulatedCall:
    return SimulatedCall("v3:call-1", "stream-1", "user-1", dict(PARAMS))


def connected(wire: TelnyxWire, call: SimulatedCall) -> TelnyxStream:
    codec = TelnyxStream()
    events = [codec.decode(frame) for frame in wire.handshake(call)]
    assert events[0] is None
    assert events[1] == StreamStarted("v3:call-1", "stream-1", "user-1", PARAMS, wire.format)
    return codec


def test_pcmu_round_trips_byte_exact() -> None:
    wire, call = TelnyxWire(), new_call()
    codec = connected(wire, call)
    chunks = [bytes([n]) * FRAME_BYTES for n in (0x00, 0x7F, 0x80, 0xFF)]
    for n, chunk in enumerate(chunks):
        assert codec.decode(wire.audio(call, chunk)) == CallerAudio(
            base64.b64encode(chunk).decode()
        )
        assert (call.chunk, call.timestamp_ms) == (n + 2, 20 * (n + 1))
    assert codec.out_of_order == 0
    assert codec.decode(wire.dtmf(call, "7")) == Dtmf("7")
    assert codec.decode(wire.mark_echo(call, "m 1")) == MarkPlayed("m 1")
    stop = wire.stop(call)
    assert stop is not None and codec.decode(stop) == StreamStopped()
    assert call.sequence == 9  # start, 4 media, dtmf, mark, stop


def test_what_the_codec_sends_is_what_the_wire_reads() -> None:
    wire, call = TelnyxWire(), new_call()
    codec = connected(wire, call)
    audio = bytes(range(256))
    assert wire.parse(codec.audio(audio)) == AgentSpoke(audio)
    assert wire.parse(codec.mark('he said "hi"')) == Marked('he said "hi"')
    assert wire.parse(codec.clear()) == Cleared()


@pytest.mark.parametrize(
    "frame",
    [
        b'{"event":"clear"}',
        "not json",
        "[]",
        '{"event":"stop"}',
        '{"event":"media","media":{"payload":""}}',
        '{"event":"media","media":{"payload":"abc!"}}',
        '{"event":"media"}',
        '{"event":"mark","mark":{}}',
    ],
)
def test_the_wire_refuses_what_telnyx_would(frame: str | bytes) -> None:
    with pytest.raises(ValueError):
        TelnyxWire().parse(frame)


def test_the_stream_token_header_passes_the_upgrade_check() -> None:
    hooks = TelnyxWebhooks.from_settings(TelnyxSettings(stream_token="tok-123"))
    url = "ws://127.0.0.1/telnyx/media"
    with_token = TelnyxWire(stream_token="tok-123").upgrade_headers(new_call())
    assert with_token == [("x-telnyx-streaming-auth-token", "tok-123")]
    assert hooks.upgrade_signed(HttpRequest(url, "GET", dict(with_token)), now=0.0)
    assert TelnyxWire().upgrade_headers(new_call()) == []
    assert not hooks.upgrade_signed(HttpRequest(url, "GET", {}), now=0.0)


def test_l16_8k_round_trips_sample_exact() -> None:
    wire, call = TelnyxWire("L16", 8000), new_call()
    codec = connected(wire, call)
    audio = bytes(range(256))[:FRAME_BYTES]
    event = codec.decode(wire.audio(call, audio))
    assert isinstance(event, CallerAudio)
    assert ulaw_to_pcm16(base64.b64decode(event.payload)) == ulaw_to_pcm16(audio)
    spoke = wire.parse(codec.audio(audio))
    assert isinstance(spoke, AgentSpoke) and ulaw_to_pcm16(spoke.audio) == ulaw_to_pcm16(audio)
    payload = json.loads(codec.audio(b"\x00"))["media"]["payload"]  # mu-law 0x00: -32124
    assert base64.b64decode(payload) == (-32124).to_bytes(2, "big", signed=True)


def rms_db(mulaw: bytes) -> float:
    samples = np.frombuffer(ulaw_to_pcm16(mulaw), dtype="<i2").astype(np.float64)
    return 20 * math.log10(math.sqrt(float(np.mean(samples**2))))


def test_l16_16k_round_trips_whole_chunks_at_the_same_level() -> None:
    wire, call = TelnyxWire("L16", 16000), new_call()
    codec = connected(wire, call)
    assert codec.start is not None and wire.format == AudioFormat("l16", 16000, big_endian=True)
    signal = tone(1.0, 440.0)
    chunks = [signal[i : i + FRAME_BYTES] for i in range(0, len(signal), FRAME_BYTES)]
    # caller -> bridge
    heard = []
    for chunk in chunks:
        event = codec.decode(wire.audio(call, chunk))
        assert isinstance(event, CallerAudio)
        heard.append(base64.b64decode(event.payload))
    assert [len(h) for h in heard[1:]] == [FRAME_BYTES] * (len(chunks) - 1)
    assert abs(rms_db(b"".join(heard[5:])) - rms_db(signal[5 * FRAME_BYTES :])) < 1.0
    # bridge -> caller
    spoken = []
    for chunk in chunks:
        event = wire.parse(codec.audio(chunk))
        assert isinstance(event, AgentSpoke)
        spoken.append(event.audio)
    assert [len(s) for s in spoken[1:]] == [FRAME_BYTES] * (len(chunks) - 1)
    assert abs(rms_db(b"".join(spoken[5:])) - rms_db(signal[5 * FRAME_BYTES :])) < 1.0
