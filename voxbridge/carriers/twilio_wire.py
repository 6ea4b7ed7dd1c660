"""Twilio Media Streams wire constants and inbound-frame encoders.

This is the lower half of :mod:`voxbridge.carriers.twilio`: the constants of the wire format and a
set of pure functions that build the JSON text frames *Twilio* sends to us (``connected``,
``start``, ``media``, ``dtmf``, ``mark`` echoes, ``stop``). Production code never calls the
encoders; they exist so a carrier simulator and the tests can produce frames in Twilio's exact
shape (Twilio's "Media Streams - WebSocket Messages" reference), including its quirk of sending ``sequenceNumber``,
``media.chunk`` and ``media.timestamp`` as *strings* of digits while ``mediaFormat.sampleRate`` and
``mediaFormat.channels`` are JSON numbers.

Everything here is pure: stdlib ``json`` (and the DTMF digits every carrier shares,
:data:`voxbridge.carriers.fields.DTMF_DIGITS`), no state, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .fields import DTMF_DIGITS

__all__ = [
    "CHANNELS",
    "DTMF_DIGITS",
    "MULAW_ENCODING",
    "SAMPLE_RATE",
    "encode_connected",
    "encode_dtmf",
    "encode_inbound_media",
    "encode_mark_echo",
    "encode_start",
    "encode_stop",
]

MULAW_ENCODING = "audio/x-mulaw"
"""The only ``start.mediaFormat.encoding`` Twilio uses: G.711 mu-law."""
SAMPLE_RATE = 8000
"""The only ``start.mediaFormat.sampleRate`` Twilio uses, in Hz."""
CHANNELS = 1
"""The only ``start.mediaFormat.channels`` Twilio uses."""

_SEPARATORS = (",", ":")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=_SEPARATORS)


def encode_connected(protocol: str = "Call", version: str = "1.0.0") -> str:
    """Build the ``connected`` frame Twilio sends first on every socket.

    Returns:
        One JSON text frame.
    """
    return _dumps({"event": "connected", "protocol": protocol, "version": version})


def encode_start(
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    *,
    sequence_number: int = 1,
    tracks: Sequence[str] = ("inbound",),
    custom_parameters: Mapping[str, str] | None = None,
    encoding: str = MULAW_ENCODING,
    sample_rate: int = SAMPLE_RATE,
    channels: int = CHANNELS,
) -> str:
    """Build a ``start`` frame in Twilio's shape.

    Args:
        stream_sid: the ``MZ...`` stream SID (sent both inside ``start`` and at top level).
        call_sid: the ``CA...`` call SID.
        account_sid: the ``AC...`` account SID.
        sequence_number: emitted as a string, as Twilio does.
        tracks: ``start.tracks``.
        custom_parameters: the ``<Parameter>`` pairs of the TwiML ``<Stream>``.
        encoding: ``mediaFormat.encoding``; override only to build a bad frame in a test.
        sample_rate: ``mediaFormat.sampleRate``; override only to build a bad frame.
        channels: ``mediaFormat.channels``; override only to build a bad frame.

    Returns:
        One JSON text frame.
    """
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": list(tracks),
                "mediaFormat": {
                    "encoding": encoding,
                    "sampleRate": sample_rate,
                    "channels": channels,
                },
                "customParameters": dict(custom_parameters or {}),
            },
            "streamSid": stream_sid,
        }
    )


def encode_inbound_media(
    stream_sid: str,
    payload_b64: str,
    *,
    chunk: int,
    timestamp: int,
    sequence_number: int,
    track: str = "inbound",
) -> str:
    """Build an inbound ``media`` frame (caller audio) in Twilio's shape.

    Args:
        stream_sid: the stream SID of the call.
        payload_b64: base64 of raw mu-law 8 kHz mono audio, no header.
        chunk: ``media.chunk`` (starts at 1), emitted as a string.
        timestamp: ``media.timestamp`` in ms since stream start, emitted as a string.
        sequence_number: emitted as a string.
        track: ``media.track``.

    Returns:
        One JSON text frame.
    """
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp),
                "payload": payload_b64,
            },
            "streamSid": stream_sid,
        }
    )


def encode_dtmf(
    stream_sid: str, digit: str, sequence_number: int, track: str = "inbound_track"
) -> str:
    """Build a ``dtmf`` frame (the caller pressed a key) in Twilio's shape.

    Returns:
        One JSON text frame.
    """
    return _dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": track, "digit": digit},
        }
    )


def encode_mark_echo(stream_sid: str, name: str, sequence_number: int) -> str:
    """Build the ``mark`` frame Twilio echoes once the audio before a mark played (or was cleared).

    Returns:
        One JSON text frame.
    """
    return _dumps(
        {
            "event": "mark",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    )


def encode_stop(stream_sid: str, call_sid: str, account_sid: str, sequence_number: int) -> str:
    """Build the ``stop`` frame Twilio sends when the stream stops or the call ends.

    Returns:
        One JSON text frame.
    """
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )
