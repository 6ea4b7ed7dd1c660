"""A sans-IO codec for Twilio Media Streams (bidirectional ``<Connect><Stream>``).

Twilio talks to us over one WebSocket per call, one JSON text frame per message. This module turns
those frames into typed, frozen events and builds the frames we send back; it never touches a
socket, a clock or a logger, so the whole protocol can be tested synchronously and fuzzed. The I/O
layer owns the socket: it hands every received text frame to :meth:`TwilioStream.decode` and
writes whatever :meth:`TwilioStream.audio`, :meth:`TwilioStream.mark` and
:meth:`TwilioStream.clear` return.

:class:`TwilioStream` is Twilio's :class:`~voxbridge.carriers.base.CarrierCodec`: :meth:`decode`
returns the carrier-neutral events the call speaks (``start`` -> :class:`StreamStarted` with
``call_id`` = ``CallSid``, ``stream_id`` = ``StreamSid``, ``account_id`` = ``AccountSid`` and the
Twilio :class:`Start` as ``details``; ``media`` -> :class:`CallerAudio` carrying the payload
verbatim; ``mark`` -> :class:`MarkPlayed`; ``dtmf`` -> the neutral ``Dtmf``; ``stop`` ->
:class:`StreamStopped`; ``connected`` -> ``None``). :meth:`TwilioStream.receive` validates frames
exactly the same way and returns Twilio's own events (:data:`TwilioEvent`), for tests and embedders
that want every field. Twilio's :data:`CAPABILITIES`: marks echoed once played, and echoed at once
when a ``clear`` discarded their audio; ``stop`` before the socket closes; audio in text frames.

The state machine of one stream (Twilio's "Media Streams - WebSocket Messages" reference)::

    fresh --connected--> connected --start--> started --stop--> stopped
      |                                 ^      |    ^
      +-------------start---------------+      +----+ media / mark / dtmf

``connected`` is optional and may come at most once, before ``start``. ``start`` comes exactly
once. ``media``, ``mark`` (the echo of a mark we sent) and ``dtmf`` are valid only while started.
``stop`` ends the stream and nothing may follow it. Any ``streamSid`` a frame carries must be the
one ``start`` announced. A frame that breaks a rule raises :class:`RemoteProtocolError` -- it is
*their* bad input, and the call layer turns it into ``Disconnect(Reason.PROTOCOL_ERROR)`` -- and
leaves the state exactly as it was. No other exception escapes ``receive``, whatever text or
bytes it is fed. Sending before ``start`` raises :class:`LocalProtocolError`: we cannot address a
stream we have not been told about, so that is *our* bug. Sending after ``stop`` is allowed (a send
racing the caller's hang-up is not a bug; the bytes just go to a closing socket).

Caller audio stays base64 text. Twilio sends mu-law audio as base64 inside JSON and the AI provider
wants base64 inside JSON too, so the hot path forwards the payload verbatim: it is validated once
(strict base64, non-empty, :func:`voxbridge.audio.b64_decode`) and never re-encoded, and
:meth:`TwilioStream.decode` builds the :class:`CallerAudio` directly (one object per frame). A
``media`` frame of another track than ``inbound`` decodes to ``None`` (a bidirectional stream has
only the inbound track). :attr:`Media.audio` decodes it for the rare consumer that needs the bytes.
Outbound frames are built from string templates prepared once at ``start``, with the stream SID
JSON-escaped a single time; :meth:`TwilioStream.audio` (also :meth:`TwilioStream.media`) takes the
agent's audio as *bytes* and encodes it itself, and mark names are JSON-escaped, so no text from a
provider can change an outbound frame's JSON structure.

The inbound-frame encoders used by simulators and tests live in
:mod:`voxbridge.carriers.twilio_wire` and are re-exported here.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

import attrs

from voxbridge.audio import b64_encode
from voxbridge.carriers import base, fields
from voxbridge.carriers.base import (
    MULAW_8K,
    CallerAudio,
    Capabilities,
    CarrierEvent,
    LocalProtocolError,
    MarkPlayed,
    StreamStarted,
    StreamStopped,
)
from voxbridge.carriers.fields import (
    MISSING,
    SAFETY_NET,
    audio_payload,
    counter,
    json_string,
    object_field,
    parse_frame,
    same_stream,
    show,
    string_field,
    unexpected,
)
from voxbridge.carriers.twilio_wire import (
    CHANNELS,
    DTMF_DIGITS,
    MULAW_ENCODING,
    SAMPLE_RATE,
    encode_connected,
    encode_dtmf,
    encode_inbound_media,
    encode_mark_echo,
    encode_start,
    encode_stop,
)
from voxbridge.errors import RemoteProtocolError

__all__ = [
    "CAPABILITIES",
    "CHANNELS",
    "DTMF_DIGITS",
    "MULAW_ENCODING",
    "SAMPLE_RATE",
    "Connected",
    "Dtmf",
    "LocalProtocolError",
    "Mark",
    "Media",
    "MediaFormat",
    "Start",
    "Stop",
    "TwilioEvent",
    "TwilioStream",
    "encode_connected",
    "encode_dtmf",
    "encode_inbound_media",
    "encode_mark_echo",
    "encode_start",
    "encode_stop",
]


#: What Twilio's stream does (:class:`~voxbridge.carriers.base.Capabilities`): marks, echoed
#: also when a ``clear`` discarded their audio; ``stop`` before closing; base64 audio in text frames.
CAPABILITIES: Final = Capabilities(
    marks=True, echoes_cleared_marks=True, sends_stop=True, binary_audio=False
)

# --------------------------------------------------------------------------------------- events


@attrs.frozen
class Connected:
    """Twilio's greeting, the optional first frame. Missing fields read as ``""``."""

    protocol: str
    version: str


@attrs.frozen
class MediaFormat:
    """``start.mediaFormat``; always mu-law, 8000 Hz, mono (anything else is rejected)."""

    encoding: str
    sample_rate: int
    channels: int


def _copy_params(params: Mapping[str, str]) -> dict[str, str]:
    return dict(params)


@attrs.frozen
class Start:
    """The stream has started: who it is for and what was passed in ``<Parameter>`` tags.

    ``custom_parameters`` is a private ``dict`` copy and takes no part in hashing.
    ``sequence_number`` is ``None`` when Twilio did not send one.
    """

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    media_format: MediaFormat
    custom_parameters: Mapping[str, str] = attrs.field(converter=_copy_params, hash=False)
    sequence_number: int | None = None


@attrs.frozen
class Media:
    """A chunk of caller audio.

    ``payload`` is the base64 text exactly as received (validated: strict, non-empty), ready to be
    forwarded without re-encoding. ``chunk`` and ``timestamp`` (ms since stream start) are parsed
    from Twilio's digit strings.
    """

    track: str
    chunk: int
    timestamp: int
    payload: str

    @property
    def audio(self) -> bytes:
        """The raw mu-law bytes of ``payload`` (decoded on every access)."""
        return binascii.a2b_base64(self.payload)


@attrs.frozen
class Mark:
    """Twilio's echo of a mark we sent: the audio before it has played, or was cleared."""

    name: str


@attrs.frozen
class Dtmf:
    """The caller pressed a key; ``digit`` is one of ``0-9 * # A-D``."""

    digit: str
    track: str


@attrs.frozen
class Stop:
    """The stream stopped or the call ended. Fields Twilio left out read as ``""``."""

    account_sid: str
    call_sid: str


TwilioEvent: TypeAlias = Connected | Start | Media | Mark | Dtmf | Stop
"""Every event :meth:`TwilioStream.receive` can return."""


# ---------------------------------------------------------------------------------------- codec

_Decoder: TypeAlias = Callable[["TwilioStream", dict[str, object]], TwilioEvent]
_NeutralDecoder: TypeAlias = Callable[["TwilioStream", dict[str, object]], CarrierEvent | None]


class TwilioStream:
    """The state of one Twilio Media Stream, fed one WebSocket text frame at a time: Twilio's
    :class:`~voxbridge.carriers.base.CarrierCodec`.

    Attributes:
        MAX_FRAME: frames longer than this (characters for ``str``, bytes for ``bytes``) are
            rejected before parsing.
        capabilities: :data:`CAPABILITIES`.
    """

    MAX_FRAME: int = 64 * 1024
    capabilities: Capabilities = CAPABILITIES

    def __init__(self) -> None:
        self._connected = False
        self._start: Start | None = None
        self._stopped = False
        self._sid_json = ""
        self._media_prefix = ""

    # ------------------------------------------------------------------------------- state

    @property
    def start(self) -> Start | None:
        """The ``start`` event, once received."""
        return self._start

    @property
    def started(self) -> bool:
        """True once ``start`` has been received (it stays true after ``stop``)."""
        return self._start is not None

    @property
    def stopped(self) -> bool:
        """True once ``stop`` has been received; no further frame is accepted."""
        return self._stopped

    @property
    def stream_sid(self) -> str | None:
        """The ``MZ...`` stream SID from ``start``, or ``None`` before it."""
        return None if self._start is None else self._start.stream_sid

    @property
    def call_sid(self) -> str | None:
        """The ``CA...`` call SID from ``start``, or ``None`` before it."""
        return None if self._start is None else self._start.call_sid

    # ----------------------------------------------------------------------------- inbound

    def decode(self, frame: str | bytes) -> CarrierEvent | None:
        """Decode one WebSocket frame from Twilio as a carrier-neutral event and advance the state
        machine (Twilio Media Streams, "WebSocket Messages").

        Args:
            frame: the frame's text; ``bytes`` are decoded as UTF-8.

        Returns:
            :class:`StreamStarted` for ``start`` (``details`` is the Twilio :class:`Start`),
            :class:`CallerAudio` for inbound ``media`` (the base64 payload as received),
            :class:`MarkPlayed`, the neutral :class:`~voxbridge.carriers.base.Dtmf`,
            :class:`StreamStopped`; ``None`` for ``connected`` and for ``media`` of another track.

        Raises:
            RemoteProtocolError: as :meth:`receive` (the same checks, the state left unchanged).
            TypeError: ``frame`` is neither ``str`` nor ``bytes`` (a bug in the caller).
        """
        event, message = self._parse(frame)
        decoder = _NEUTRAL.get(event)
        if decoder is None:
            raise RemoteProtocolError(f"unknown event {show(event)}")
        try:
            return decoder(self, message)
        except RemoteProtocolError:
            raise
        except SAFETY_NET as exc:  # a decoder bug; still never let it escape
            raise unexpected(event, exc) from exc

    def receive(self, frame: str | bytes) -> TwilioEvent:
        """Decode one WebSocket text frame from Twilio and advance the state machine.

        Args:
            frame: the frame's text; ``bytes`` are decoded as UTF-8.

        Returns:
            The decoded event.

        Raises:
            RemoteProtocolError: the frame is not a valid Twilio message in the current state (too
                long, not UTF-8, not a JSON object, unknown event, missing or mistyped field, bad
                base64, out of order, wrong stream SID, ...). The state is left unchanged.
            TypeError: ``frame`` is neither ``str`` nor ``bytes`` (a bug in the caller).
        """
        event, message = self._parse(frame)
        decoder = _DECODERS.get(event)
        if decoder is None:
            raise RemoteProtocolError(f"unknown event {show(event)}")
        try:
            return decoder(self, message)
        except RemoteProtocolError:
            raise
        except SAFETY_NET as exc:  # a decoder bug; still never let it escape
            raise unexpected(event, exc) from exc

    def _parse(self, frame: str | bytes) -> tuple[str, dict[str, object]]:
        """The frame's ``event`` name and its JSON object, checked as far as every event shares."""
        if self._stopped:
            raise RemoteProtocolError("frame after stop")
        return parse_frame(frame, self.MAX_FRAME, foreign=TypeError)

    def _require_started(self, message: dict[str, object], event: str) -> None:
        start = self._start
        if start is None:
            raise RemoteProtocolError(f"{event} before start")
        same_stream(message, "streamSid", start.stream_sid, event)

    def _decode_connected(self, message: dict[str, object]) -> Connected:
        if self._start is not None:
            raise RemoteProtocolError("connected after start")
        if self._connected:
            raise RemoteProtocolError("duplicate connected")
        event = Connected(
            protocol=string_field(message, "protocol", "connected.protocol", ""),
            version=string_field(message, "version", "connected.version", ""),
        )
        self._connected = True
        return event

    def _decode_start(self, message: dict[str, object]) -> Start:
        if self._start is not None:
            raise RemoteProtocolError("duplicate start")
        body = object_field(message, "start", "start")
        stream_sid = string_field(body, "streamSid", "start.streamSid")
        if not stream_sid:
            raise RemoteProtocolError("start.streamSid is empty")
        top_sid = message.get("streamSid", MISSING)
        if top_sid is not MISSING and top_sid != stream_sid:
            raise RemoteProtocolError(
                f"streamSid {show(top_sid)} does not match start.streamSid {stream_sid!r}"
            )
        call_sid = string_field(body, "callSid", "start.callSid")
        account_sid = string_field(body, "accountSid", "start.accountSid", "")

        raw_tracks = body.get("tracks", [])
        if type(raw_tracks) is not list:
            raise RemoteProtocolError(f"start.tracks must be an array, got {show(raw_tracks)}")
        for track in raw_tracks:
            if type(track) is not str:
                raise RemoteProtocolError(f"start.tracks must hold strings, got {show(track)}")

        fmt = object_field(body, "mediaFormat", "start.mediaFormat")
        encoding = string_field(fmt, "encoding", "start.mediaFormat.encoding")
        if encoding != MULAW_ENCODING:
            raise RemoteProtocolError(
                f"start.mediaFormat.encoding must be {MULAW_ENCODING!r}, got {show(encoding)}"
            )
        for key, expected in (("sampleRate", SAMPLE_RATE), ("channels", CHANNELS)):
            value = fmt.get(key, MISSING)
            if value is MISSING:
                raise RemoteProtocolError(f"start.mediaFormat.{key} is missing")
            if type(value) is not int or value != expected:
                raise RemoteProtocolError(
                    f"start.mediaFormat.{key} must be {expected}, got {show(value)}"
                )

        params = body.get("customParameters", {})
        if type(params) is not dict:
            raise RemoteProtocolError(
                f"start.customParameters must be an object, got {show(params)}"
            )
        for name, value in params.items():
            if type(value) is not str:
                raise RemoteProtocolError(
                    f"start.customParameters[{show(name)}] must be a string, got {show(value)}"
                )

        raw_seq = message.get("sequenceNumber", MISSING)
        sequence_number = None if raw_seq is MISSING else counter(raw_seq, "sequenceNumber")

        start = Start(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            tracks=tuple(raw_tracks),
            media_format=MediaFormat(MULAW_ENCODING, SAMPLE_RATE, CHANNELS),
            custom_parameters=params,
            sequence_number=sequence_number,
        )
        self._sid_json = json.dumps(stream_sid)
        self._media_prefix = f'{{"event":"media","streamSid":{self._sid_json},"media":{{"payload":"'
        self._start = start
        return start

    def _media_body(self, message: dict[str, object]) -> tuple[dict[str, object], str]:
        """A ``media`` frame's body and its payload, checked (strict, non-empty base64)."""
        self._require_started(message, "media")
        body = object_field(message, "media", "media")
        payload, _ = audio_payload(body, "media.payload")
        return body, payload

    def _decode_media(self, message: dict[str, object]) -> Media:
        body, payload = self._media_body(message)
        return Media(
            track=string_field(body, "track", "media.track", "inbound"),
            chunk=counter(body.get("chunk", MISSING), "media.chunk"),
            timestamp=counter(body.get("timestamp", MISSING), "media.timestamp"),
            payload=payload,
        )

    def _caller_audio(self, message: dict[str, object]) -> CallerAudio | None:
        # The hot path: the same checks as _decode_media, and one object per frame.
        body, payload = self._media_body(message)
        track = string_field(body, "track", "media.track", "inbound")
        counter(body.get("chunk", MISSING), "media.chunk")
        counter(body.get("timestamp", MISSING), "media.timestamp")
        return CallerAudio(payload) if track == "inbound" else None

    def _stream_started(self, message: dict[str, object]) -> StreamStarted:
        start = self._decode_start(message)
        return StreamStarted(
            call_id=start.call_sid,
            stream_id=start.stream_sid,
            account_id=start.account_sid,
            custom_parameters=start.custom_parameters,
            audio_format=MULAW_8K,
            details=start,
        )

    def _greeting(self, message: dict[str, object]) -> None:
        self._decode_connected(message)

    def _mark_played(self, message: dict[str, object]) -> MarkPlayed:
        return MarkPlayed(self._decode_mark(message).name)

    def _dtmf(self, message: dict[str, object]) -> base.Dtmf:
        return base.Dtmf(self._decode_dtmf(message).digit)

    def _stream_stopped(self, message: dict[str, object]) -> StreamStopped:
        self._decode_stop(message)
        return StreamStopped()

    def _decode_mark(self, message: dict[str, object]) -> Mark:
        self._require_started(message, "mark")
        body = object_field(message, "mark", "mark")
        return Mark(name=string_field(body, "name", "mark.name"))

    def _decode_dtmf(self, message: dict[str, object]) -> Dtmf:
        self._require_started(message, "dtmf")
        body = object_field(message, "dtmf", "dtmf")
        digit = fields.digit(string_field(body, "digit", "dtmf.digit"), "dtmf.digit")
        return Dtmf(digit=digit, track=string_field(body, "track", "dtmf.track", "inbound_track"))

    def _decode_stop(self, message: dict[str, object]) -> Stop:
        self._require_started(message, "stop")
        body = object_field(message, "stop", "stop") if "stop" in message else {}
        event = Stop(
            account_sid=string_field(body, "accountSid", "stop.accountSid", ""),
            call_sid=string_field(body, "callSid", "stop.callSid", ""),
        )
        self._stopped = True
        return event

    # ---------------------------------------------------------------------------- outbound

    def _sid(self, what: str) -> str:
        if self._start is None:
            raise LocalProtocolError(f"cannot send {what} before start")
        return self._sid_json

    def audio(self, mulaw: bytes) -> str:
        """Build a ``media`` frame that plays ``mulaw`` (raw mu-law 8 kHz) to the caller: the
        :class:`~voxbridge.carriers.base.CarrierCodec` name of :meth:`media`.

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        if self._start is None:
            raise LocalProtocolError("cannot send media before start")
        return f'{self._media_prefix}{b64_encode(mulaw)}"}}}}'

    def media(self, audio: bytes) -> str:
        """Build a ``media`` frame that plays ``audio`` to the caller.

        Args:
            audio: raw mu-law 8 kHz mono audio, no header. It is base64-encoded here, so nothing a
                provider sends can reach the frame's JSON except as base64 text.

        Returns:
            ``{"event":"media","streamSid":"MZ...","media":{"payload":"..."}}``

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        if self._start is None:
            raise LocalProtocolError("cannot send media before start")
        return f'{self._media_prefix}{b64_encode(audio)}"}}}}'

    def mark(self, name: str) -> str:
        """Build a ``mark`` frame; Twilio echoes it once the audio sent before it has played.

        Returns:
            ``{"event":"mark","streamSid":"MZ...","mark":{"name":"..."}}`` (``name`` JSON-escaped).

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        sid = self._sid("mark")
        return f'{{"event":"mark","streamSid":{sid},"mark":{{"name":{json_string(name)}}}}}'

    def clear(self) -> str:
        """Build a ``clear`` frame: drop all buffered audio (pending marks are echoed back).

        Returns:
            ``{"event":"clear","streamSid":"MZ..."}``

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        return f'{{"event":"clear","streamSid":{self._sid("clear")}}}'


_DECODERS: Final[dict[str, _Decoder]] = {
    "connected": TwilioStream._decode_connected,
    "start": TwilioStream._decode_start,
    "media": TwilioStream._decode_media,
    "mark": TwilioStream._decode_mark,
    "dtmf": TwilioStream._decode_dtmf,
    "stop": TwilioStream._decode_stop,
}

_NEUTRAL: Final[dict[str, _NeutralDecoder]] = {
    "connected": TwilioStream._greeting,
    "start": TwilioStream._stream_started,
    "media": TwilioStream._caller_audio,
    "mark": TwilioStream._mark_played,
    "dtmf": TwilioStream._dtmf,
    "stop": TwilioStream._stream_stopped,
}
