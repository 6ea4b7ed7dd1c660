"""Telnyx's side of a media stream, for the caller simulator and the tests: a :class:`CallerWire`.

The encoders build the JSON text frames *Telnyx* sends (Telnyx's "Stream call media over
WebSocket" reference, snake_case): ``connected``, ``start`` (``stream_id`` at the top level,
``start.call_control_id``, ``start.media_format``, the TeXML ``<Parameter>`` pairs in
``start.custom_parameters``), ``media`` (``media.chunk``, ``media.timestamp`` and
``sequence_number`` as digit strings, ``media.payload`` the base64 RTP payload without header),
``dtmf``, ``mark`` echoes, ``error`` and ``stop``. :class:`TelnyxWire` speaks them for the
simulator and reads what the bridge sends back as Telnyx would (``media``, ``mark``, ``clear``;
anything else is refused, as Telnyx answers it with an ``error``).

For ``L16`` the wire converts the simulator's mu-law 8 kHz to big-endian L16 at the stream's rate
and back (:mod:`voxbridge.carriers.transcode`; one soxr resampler per direction): use one wire per
call, since :meth:`TelnyxWire.parse` has no call to key a resampler by.

Pure: stdlib ``json`` plus the transcoder; no I/O.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from ..audio import b64_decode, b64_encode
from ..carriers.base import Capabilities, Frame
from ..carriers.telnyx import TelnyxStream, audio_format
from ..carriers.telnyx_webhooks import STREAM_TOKEN_HEADER
from ..carriers.transcode import Transcoder, transcoder
from .carrier_wire import AgentSpoke, Cleared, Marked, SimulatedCall, WireEvent

__all__ = [
    "TelnyxWire",
    "encode_connected",
    "encode_dtmf",
    "encode_error",
    "encode_mark_echo",
    "encode_media",
    "encode_start",
    "encode_stop",
]

_SEPARATORS = (",", ":")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=_SEPARATORS)


def encode_connected(version: str = "1.0.0") -> str:
    """The ``connected`` frame Telnyx sends first."""
    return _dumps({"event": "connected", "version": version})


def encode_start(
    stream_id: str,
    call_control_id: str,
    user_id: str,
    *,
    sequence_number: int = 1,
    encoding: str = "PCMU",
    sample_rate: int = 8000,
    channels: int = 1,
    custom_parameters: Mapping[str, str] | None = None,
    client_state: str | None = None,
    from_: str = "+15550001111",
    to: str = "+15550002222",
) -> str:
    """A ``start`` frame in Telnyx's shape (``stream_id`` top level, ``start.call_control_id``,
    ``start.media_format``; ``custom_parameters`` as an object of strings)."""
    return _dumps(
        {
            "event": "start",
            "sequence_number": str(sequence_number),
            "start": {
                "user_id": user_id,
                "call_control_id": call_control_id,
                "client_state": client_state,
                "from": from_,
                "to": to,
                "media_format": {
                    "encoding": encoding,
                    "sample_rate": sample_rate,
                    "channels": channels,
                },
                "custom_parameters": dict(custom_parameters or {}),
            },
            "stream_id": stream_id,
        }
    )


def encode_media(
    stream_id: str,
    payload_b64: str,
    *,
    chunk: int,
    timestamp: int,
    sequence_number: int,
    track: str = "inbound",
) -> str:
    """An inbound ``media`` frame: ``payload_b64`` is base64 of the raw RTP payload (mu-law for
    PCMU, big-endian samples for L16); counters are digit strings, as Telnyx sends them."""
    return _dumps(
        {
            "event": "media",
            "sequence_number": str(sequence_number),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp),
                "payload": payload_b64,
            },
            "stream_id": stream_id,
        }
    )


def encode_dtmf(stream_id: str, digit: str, sequence_number: int) -> str:
    """A ``dtmf`` frame: the caller pressed ``digit``."""
    return _dumps(
        {
            "event": "dtmf",
            "stream_id": stream_id,
            "sequence_number": str(sequence_number),
            "dtmf": {"digit": digit},
        }
    )


def encode_mark_echo(stream_id: str, name: str, sequence_number: int) -> str:
    """The ``mark`` frame Telnyx sends once the audio before mark ``name`` has played (or a
    ``clear`` discarded it)."""
    return _dumps(
        {
            "event": "mark",
            "sequence_number": str(sequence_number),
            "stream_id": stream_id,
            "mark": {"name": name},
        }
    )


def encode_error(
    stream_id: str, code: int, title: str, detail: str, sequence_number: int = 1
) -> str:
    """An ``error`` frame: Telnyx could not use a frame we sent."""
    return _dumps(
        {
            "event": "error",
            "sequence_number": str(sequence_number),
            "stream_id": stream_id,
            "payload": {"code": code, "title": title, "detail": detail},
        }
    )


def encode_stop(stream_id: str, call_control_id: str, user_id: str, sequence_number: int) -> str:
    """The ``stop`` frame Telnyx sends when the stream stops or the call ends."""
    return _dumps(
        {
            "event": "stop",
            "sequence_number": str(sequence_number),
            "stop": {"user_id": user_id, "call_control_id": call_control_id},
            "stream_id": stream_id,
        }
    )


class TelnyxWire:
    """Telnyx's wire for the caller simulator (a :class:`~.carrier_wire.CallerWire`).

    Args:
        codec: ``PCMU`` (mu-law 8 kHz, passed through) or ``L16`` (big-endian, converted).
        sample_rate: the stream's rate in Hz (``L16``: 8000 or 16000).
        stream_token: sent as ``x-telnyx-streaming-auth-token`` on the upgrade when given.

    Raises:
        ValueError: a codec or rate the codec does not convert.
    """

    carrier = "telnyx"
    capabilities: Capabilities = TelnyxStream.capabilities

    def __init__(
        self, codec: str = "PCMU", sample_rate: int = 8000, *, stream_token: str | None = None
    ) -> None:
        self.format = audio_format(codec, sample_rate)
        self.codec = codec
        self.sample_rate = sample_rate
        self.stream_token = stream_token
        self._up: Transcoder | None = transcoder(self.format)  # caller mu-law -> the stream's
        self._down: Transcoder | None = transcoder(self.format)  # the bridge's audio -> mu-law

    def __repr__(self) -> str:
        token = "<set>" if self.stream_token else None
        return f"TelnyxWire(codec={self.codec!r}, sample_rate={self.sample_rate}, stream_token={token})"

    def upgrade_headers(self, call: SimulatedCall) -> list[tuple[str, str]]:
        """``x-telnyx-streaming-auth-token`` when the wire has a stream token."""
        return [(STREAM_TOKEN_HEADER, self.stream_token)] if self.stream_token else []

    def handshake(self, call: SimulatedCall) -> list[Frame]:
        """``connected``, then ``start`` with the call's parameters."""
        return [
            encode_connected(),
            encode_start(
                call.stream_id,
                call.call_id,
                call.account_id,
                sequence_number=call.next_sequence(),
                encoding=self.codec,
                sample_rate=self.sample_rate,
                custom_parameters=call.custom_parameters,
            ),
        ]

    def audio(self, call: SimulatedCall, mulaw: bytes) -> Frame:
        """One ``media`` frame of caller audio (converted to L16 when the stream is)."""
        raw = mulaw if self._up is None else self._up.from_neutral(mulaw)
        frame = encode_media(
            call.stream_id,
            b64_encode(raw),
            chunk=call.chunk,
            timestamp=call.timestamp_ms,
            sequence_number=call.next_sequence(),
        )
        call.chunk += 1
        call.timestamp_ms += len(mulaw) // 8
        return frame

    def dtmf(self, call: SimulatedCall, digit: str) -> Frame:
        return encode_dtmf(call.stream_id, digit, call.next_sequence())

    def mark_echo(self, call: SimulatedCall, name: str) -> Frame:
        return encode_mark_echo(call.stream_id, name, call.next_sequence())

    def stop(self, call: SimulatedCall) -> Frame | None:
        return encode_stop(call.stream_id, call.call_id, call.account_id, call.next_sequence())

    def parse(self, frame: Frame) -> WireEvent | None:
        """A frame the bridge sent, as Telnyx reads it: ``media`` -> :class:`AgentSpoke` (mu-law
        8 kHz), ``mark`` -> :class:`Marked`, ``clear`` -> :class:`Cleared`.

        Raises:
            ValueError: a binary frame, not a JSON object, another event, or a bad payload
                (Telnyx would answer with an ``error`` frame).
        """
        if isinstance(frame, bytes):
            raise ValueError("Telnyx takes JSON text frames, not binary ones")
        try:
            message: Any = json.loads(frame)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ValueError("a frame must be a JSON object")
        event = message.get("event")
        if event == "media":
            media = message.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str) or not payload:
                raise ValueError("media.payload must be non-empty base64 text")
            try:
                raw = b64_decode(payload)
            except ValueError as exc:
                raise ValueError(f"media.payload is {exc}") from None
            if self._down is None:
                return AgentSpoke(raw)
            if len(raw) % 2:
                raise ValueError("L16 media.payload must be whole 16-bit samples")
            return AgentSpoke(base64.b64decode(self._down.to_neutral(raw)))
        if event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                raise ValueError("mark.name must be a string")
            return Marked(name)
        if event == "clear":
            return Cleared()
        raise ValueError(f"Telnyx does not take event {str(event)[:40]!r}")
