"""Plivo's side of a simulated call: a :class:`~voxbridge.testing.carrier_wire.CallerWire`.

What Plivo sends (the shapes of :mod:`voxbridge.carriers.plivo`'s docstring): a ``start`` first
(``callId``, ``streamId``, ``accountId``, ``mediaFormat`` of the configured ``contentType``, the
parameters Z-escaped in ``extra_headers``), then ``media`` frames with a numeric
``sequenceNumber`` and ``chunk``, ``media.timestamp`` a string of epoch milliseconds, and
``extra_headers`` on every message; ``dtmf``; ``playedStream`` to echo a checkpoint whose audio
played. It never echoes a checkpoint that a ``clearAudio`` discarded
(``capabilities.echoes_cleared_marks`` false) and sends no stop: the socket just closes.

What it does with what the bridge sends (:meth:`PlivoWire.parse`): ``playAudio`` is agent audio
(converted back to mu-law 8 kHz when it is L16), ``checkpoint`` a mark, ``clearAudio`` a clear,
``sendDTMF`` is ignored; anything else, or a malformed frame, is refused with ``ValueError`` (the
simulator records a protocol error of the bridge).

One wire per simulated call: an L16 stream converts through soxr resamplers whose state runs
across the call's chunks.
"""

from __future__ import annotations

import binascii
import json
import secrets
from collections import Counter
from typing import Any

from ..audio import BYTES_PER_MS, b64_decode, b64_encode
from ..carriers.base import AudioFormat, Frame
from ..carriers.plivo import (
    CAPABILITIES,
    CONTENT_TYPES,
    DEFAULT_CONTENT_TYPE,
    DTMF_DIGITS,
    L16_ENCODING,
    MULAW_ENCODING,
    encode_extra_headers,
)
from ..carriers.plivo_webhooks import NONCE_HEADER, SIGNATURE_HEADER, sign
from ..carriers.transcode import Transcoder, transcoder
from .carrier_wire import AgentSpoke, Cleared, Marked, SimulatedCall, WireEvent

__all__ = ["EPOCH_MS", "PlivoWire"]

#: ``media.timestamp`` of a stream's first chunk (2026-01-01T00:00:00Z in Unix milliseconds):
#: Plivo stamps chunks with wall-clock time, and a simulator has no clock of its own.
EPOCH_MS = 1_767_225_600_000


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class PlivoWire:
    """Plivo's wire for :class:`~voxbridge.testing.CarrierSimulator`.

    Args:
        content_type: the stream's ``contentType`` (what the ``<Stream>`` asked for), one of
            :data:`voxbridge.carriers.plivo.CONTENT_TYPES`.
        sign_upgrade: ``(auth_token, stream_url)`` to sign the WebSocket upgrade with V3 headers
            (a fresh nonce each time) as Plivo may; ``None`` (the default): no headers.
        epoch_ms: ``media.timestamp`` of the first chunk.

    Raises:
        ValueError: an unknown content type.
    """

    carrier = "plivo"
    capabilities = CAPABILITIES

    def __init__(
        self,
        content_type: str = DEFAULT_CONTENT_TYPE,
        *,
        sign_upgrade: tuple[str, str] | None = None,
        epoch_ms: int = EPOCH_MS,
    ) -> None:
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"unknown Plivo contentType {content_type!r}")
        self.content_type = content_type
        self.format: AudioFormat = CONTENT_TYPES[content_type]
        self.sign_upgrade = sign_upgrade
        self.epoch_ms = epoch_ms
        # caller audio, mu-law -> L16 (primed: no empty media frame while the resampler fills)
        self._caller: Transcoder | None = transcoder(self.format)
        self._agent: dict[AudioFormat, Transcoder] = {}  # agent audio, L16 -> mu-law
        #: How many ``playAudio`` frames came in each format.
        self.formats: Counter[AudioFormat] = Counter()
        self._extra = ""
        self._stream_id: str | None = None

    def __repr__(self) -> str:
        return f"PlivoWire({self.content_type!r})"

    # --- what Plivo sends ---------------------------------------------------------------------

    def upgrade_headers(self, call: SimulatedCall) -> list[tuple[str, str]]:
        """V3 signature headers over the stream URL when ``sign_upgrade`` is set, else none."""
        if self.sign_upgrade is None:
            return []
        auth_token, url = self.sign_upgrade
        nonce = str(secrets.randbelow(10**20)).zfill(20)
        return [(SIGNATURE_HEADER, sign(auth_token, "GET", url, nonce)), (NONCE_HEADER, nonce)]

    def handshake(self, call: SimulatedCall) -> list[Frame]:
        """Plivo's ``start``: the call's ids, the stream's ``mediaFormat``, its parameters in
        ``extra_headers`` (Z-escaped, as our ``<Stream extraHeaders>`` would carry them)."""
        self._extra = encode_extra_headers(call.custom_parameters)
        self._stream_id = call.stream_id
        encoding, _, _ = self.content_type.partition(";")
        return [
            _dumps(
                {
                    "event": "start",
                    "sequenceNumber": call.next_sequence(),
                    "start": {
                        "callId": call.call_id,
                        "streamId": call.stream_id,
                        "accountId": call.account_id,
                        "tracks": ["inbound"],
                        "mediaFormat": {
                            "encoding": encoding,
                            "sampleRate": self.format.sample_rate,
                        },
                    },
                    "extra_headers": self._extra,
                }
            )
        ]

    def audio(self, call: SimulatedCall, mulaw: bytes) -> Frame:
        """One ``media`` frame of caller audio (mu-law 8 kHz in; L16 on an L16 stream)."""
        audio = mulaw if self._caller is None else self._caller.from_neutral(mulaw)
        frame = _dumps(
            {
                "event": "media",
                "sequenceNumber": call.next_sequence(),
                "streamId": call.stream_id,
                "media": {
                    "track": "inbound",
                    "timestamp": str(self.epoch_ms + call.timestamp_ms),
                    "chunk": call.chunk,
                    "payload": b64_encode(audio),
                },
                "extra_headers": self._extra,
            }
        )
        call.chunk += 1
        call.timestamp_ms += len(mulaw) // BYTES_PER_MS
        return frame

    def dtmf(self, call: SimulatedCall, digit: str) -> Frame:
        """A ``dtmf`` frame."""
        return _dumps(
            {
                "event": "dtmf",
                "sequenceNumber": call.next_sequence(),
                "streamId": call.stream_id,
                "dtmf": {"digit": digit, "track": "inbound"},
                "extra_headers": self._extra,
            }
        )

    def mark_echo(self, call: SimulatedCall, name: str) -> Frame:
        """``playedStream``: the audio before checkpoint ``name`` has played."""
        return _dumps(
            {
                "event": "playedStream",
                "sequenceNumber": call.next_sequence(),
                "streamId": call.stream_id,
                "name": name,
                "extra_headers": self._extra,
            }
        )

    def stop(self, call: SimulatedCall) -> Frame | None:
        """``None``: Plivo sends no stop; the socket closes."""
        return None

    # --- what Plivo does with what the bridge sends ----------------------------------------------

    def parse(self, frame: Frame) -> WireEvent | None:
        """A frame from the bridge as Plivo reads it.

        Raises:
            ValueError: not a JSON text frame Plivo accepts (an unknown event, another stream's
                ``streamId``, a ``playAudio`` in a format Plivo does not play, bad base64, ...).
        """
        if not isinstance(frame, str):
            raise ValueError("Plivo takes JSON text frames only")
        message = json.loads(frame)
        if not isinstance(message, dict):
            raise ValueError("a Plivo message is a JSON object")
        event = message.get("event")
        if "streamId" in message and message["streamId"] != self._stream_id:
            raise ValueError(f"{event}: streamId {message['streamId']!r} is not this stream's")
        if event == "playAudio":
            return AgentSpoke(self._agent_audio(message.get("media")))
        if event == "checkpoint":
            name = message.get("name")
            if not isinstance(name, str):
                raise ValueError("checkpoint without a name")
            return Marked(name)
        if event == "clearAudio":
            return Cleared()
        if event == "sendDTMF":
            digits = message.get("dtmf")
            if not isinstance(digits, str) or not all(d in DTMF_DIGITS for d in digits):
                raise ValueError(f"sendDTMF digits {digits!r}")
            return None
        raise ValueError(f"Plivo has no {event!r} message")

    def _agent_audio(self, media: Any) -> bytes:
        if not isinstance(media, dict):
            raise ValueError("playAudio without a media object")
        content_type, rate, payload = (
            media.get("contentType"),
            media.get("sampleRate"),
            media.get("payload"),
        )
        if isinstance(rate, str) and rate.isdigit():
            rate = int(rate)
        if content_type == MULAW_ENCODING and rate == 8000:
            played = AudioFormat("mulaw", 8000)
        elif content_type == L16_ENCODING and rate in (8000, 16000):
            played = AudioFormat("l16", rate)
        else:
            raise ValueError(f"Plivo plays no {content_type!r} at {rate!r} Hz")
        if not isinstance(payload, str):
            raise ValueError("playAudio without a payload")
        self.formats[played] += 1
        try:
            audio = b64_decode(payload)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"playAudio payload: {exc}") from None
        if played.is_neutral:
            return audio
        if len(audio) % 2:
            raise ValueError("L16 playAudio payload is not whole samples")
        converter = self._agent.get(played)
        if converter is None:
            converter = self._agent[played] = Transcoder(played)
        return b64_decode(converter.to_neutral(audio))
